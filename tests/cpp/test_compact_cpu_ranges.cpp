// The CPU compact ranges (core/cpu/compact_ranges.h) on every instruction-set path this CPU runs,
// against a scalar reference built on keeps_element: counts, and expand and compress of a
// tensor split into chunks at awkward places, each chunk starting from its rank.
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "core/cpu/compact_ranges.h"

using namespace tinybig_cuda;

namespace {

template <typename Bits>
void check_isa(CpuIsa isa, const MaskKey& key, int64_t numel, uint64_t element_offset,
               std::mt19937_64& random) {
  std::vector<Bits> full(numel);
  for (auto& x : full) x = static_cast<Bits>(random() | 1);
  std::vector<Bits> expected_values, expected_full(numel);
  for (int64_t k = 0; k < numel; ++k) {
    if (keeps_element(element_offset + k, key)) expected_values.push_back(full[k]);
  }
  const int64_t kept = static_cast<int64_t>(expected_values.size());
  // Expanding the compressed values gives the masked matrix.
  for (int64_t k = 0, rank = 0; k < numel; ++k) {
    expected_full[k] = keeps_element(element_offset + k, key) ? expected_values[rank++] : Bits(0);
  }

  CHECK(count_kept_range(isa, 0, numel, element_offset, key) == kept, "%s count: numel %lld offset %llu",
        cpu_isa_name(isa), static_cast<long long>(numel), static_cast<unsigned long long>(element_offset));

  // Chunk boundaries that cut Philox blocks, tiles and vector steps.
  std::vector<int64_t> cuts = {0};
  for (int64_t at = 1; at < numel; at += 1 + static_cast<int64_t>(random() % 3000)) cuts.push_back(at);
  cuts.push_back(numel);

  constexpr Bits kSentinel = Bits(0xab);
  std::vector<Bits> values(kept + 1, kSentinel), expanded(numel + 1, kSentinel);
  std::vector<int64_t> first_rank = {0};
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    first_rank.push_back(first_rank.back() + count_kept_range(isa, cuts[c], cuts[c + 1], element_offset, key));
  }
  const int64_t rank = first_rank.back();
  // Compressed last chunk first, each bounded by its own last rank: a chunk that wrote past its
  // ranks would spoil the next chunk's, already written.
  for (size_t c = cuts.size() - 1; c-- > 0;) {
    compress_range(isa, full.data(), values.data(), first_rank[c + 1], sizeof(Bits), cuts[c], cuts[c + 1],
                   first_rank[c], element_offset, key);
    expand_range(isa, expected_values.data(), kept, expanded.data(), sizeof(Bits), cuts[c], cuts[c + 1],
                 first_rank[c], element_offset, key);
  }
  CHECK(rank == kept, "%s chunk counts sum to %lld, not %lld", cpu_isa_name(isa),
        static_cast<long long>(rank), static_cast<long long>(kept));
  CHECK(test::same_bytes(values.data(), expected_values.data(), kept * sizeof(Bits)) && values[kept] == kSentinel,
        "%s compress: %zu-byte, numel %lld, offset %llu", cpu_isa_name(isa), sizeof(Bits),
        static_cast<long long>(numel), static_cast<unsigned long long>(element_offset));
  CHECK(test::same_bytes(expanded.data(), expected_full.data(), numel * sizeof(Bits)) && expanded[numel] == kSentinel,
        "%s expand: %zu-byte, numel %lld, offset %llu", cpu_isa_name(isa), sizeof(Bits),
        static_cast<long long>(numel), static_cast<unsigned long long>(element_offset));

  // Too few values: nothing read or written past them; kept elements past the end get zeros.
  const int64_t short_count = kept / 3;
  std::vector<Bits> short_values(expected_values.begin(), expected_values.begin() + short_count);
  short_values.push_back(kSentinel);
  std::fill(expanded.begin(), expanded.end(), kSentinel);
  expand_range(isa, short_values.data(), short_count, expanded.data(), sizeof(Bits), 0, numel, 0, element_offset, key);
  bool clamped = expanded[numel] == kSentinel;
  for (int64_t k = 0, r = 0; k < numel; ++k) {
    const bool kept_k = keeps_element(element_offset + k, key);
    clamped = clamped && expanded[k] == (kept_k && r < short_count ? expected_values[r] : Bits(0));
    r += kept_k;
  }
  CHECK(clamped, "%s expand with too few values: numel %lld", cpu_isa_name(isa), static_cast<long long>(numel));
  std::vector<Bits> short_out(short_count + 1, kSentinel);
  compress_range(isa, full.data(), short_out.data(), short_count, sizeof(Bits), 0, numel, 0, element_offset, key);
  CHECK(short_out[short_count] == kSentinel &&
            test::same_bytes(short_out.data(), expected_values.data(), short_count * sizeof(Bits)),
        "%s compress into too few values: numel %lld", cpu_isa_name(isa), static_cast<long long>(numel));
}

}  // namespace

int main() {
  const MaskKey keys[] = {{0x0123456789abcdefull, 0xfedcba9876543210ull, keep_threshold(0.3)},
                          {0xffffffffffffffffull, 0, keep_threshold(1.0)},
                          {7, 0xffffffffffffffffull, keep_threshold(0.0)},
                          {42, 43, keep_threshold(0.75)}};
  const int64_t sizes[] = {1, 5, 64, 2049, 20011};
  const uint64_t element_offsets[] = {0, 3, (uint64_t{1} << 40) + 1};
  std::mt19937_64 random(1);
  int paths = 0;
  for (const CpuIsa isa : kAllCpuIsas) {
    if (!cpu_supports(isa)) continue;
    ++paths;
    for (const MaskKey& key : keys) {
      for (const int64_t numel : sizes) {
        for (const uint64_t element_offset : element_offsets) {
          check_isa<uint16_t>(isa, key, numel, element_offset, random);
          check_isa<uint32_t>(isa, key, numel, element_offset, random);
          check_isa<uint64_t>(isa, key, numel, element_offset, random);
        }
      }
    }
  }
  std::printf("compact CPU ranges checked on %d instruction-set paths\n", paths);
  return test::finish("compact_cpu_ranges");
}
