// Runs the CUDA compact kernels' per-thread bodies (core/cuda/compact_body.h) on the host, kernel after
// kernel, for every thread of simulated launches, and compares the count, the expanded matrix
// and the compressed values with a scalar reference built on keeps_element, bit for bit.
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "core/cuda/compact_body.h"

using namespace tinybig_cuda;

namespace {

struct Coverage {
  int vectorized = 0;
  int element_wise = 0;
  int multi_chunk_segments = 0;
};

int64_t reference_count(int64_t numel, uint64_t element_offset, const MaskKey& key) {
  int64_t kept = 0;
  for (int64_t k = 0; k < numel; ++k) kept += keeps_element(element_offset + k, key);
  return kept;
}

// A simulated launch of the count kernels 1-3 (and then kernel 4, which ranks the mask) with
// `threads` threads each; returns the scratch as compact.cu lays it out. Kernel 5 then runs on one
// ranked scratch many times, as on a mask the CUDA kernels cached.
struct Scratch {
  std::vector<uint64_t> keep_bits;
  std::vector<int64_t> chunk_counts;
  std::vector<int64_t> segment_sums;
  int64_t total = -1;
};

// The key comes as count_chunks_kernel gets it: by value (a CPU rng_state) or read from the
// state's memory (a CUDA one).
Scratch simulate_count(const CompactLayout& layout, const MaskKeySource& source, uint64_t threads) {
  const ScanLayout scan = scan_layout(chunk_count(layout));
  Scratch scratch;
  scratch.keep_bits.assign(scan.chunks, 0xdeadbeef);
  scratch.chunk_counts.assign(scan.chunks, -7);
  scratch.segment_sums.assign(scan.segments, -7);
  for (uint64_t t = 0; t < threads; ++t) {
    count_chunks_thread(layout, resolve_mask_key(source), scratch.keep_bits.data(),
                        scratch.chunk_counts.data(), t, threads);
  }
  for (uint64_t t = 0; t < threads; ++t) {
    sum_segments_thread(scan, scratch.chunk_counts.data(), scratch.segment_sums.data(), t, threads);
  }
  scan_segments(scan, scratch.segment_sums.data(), &scratch.total);
  return scratch;
}

void simulate_ranks(const CompactLayout& layout, Scratch& scratch, uint64_t threads) {
  const ScanLayout scan = scan_layout(chunk_count(layout));
  for (uint64_t t = 0; t < threads; ++t) {
    segment_offsets_thread(scan, scratch.chunk_counts.data(), scratch.segment_sums.data(), t, threads);
  }
}

template <typename Bits>
Bits nonzero_bits(std::mt19937_64& random) {
  return static_cast<Bits>(random() | 1);
}

template <typename Bits>
void check_shard(Coverage& coverage, int64_t numel, uint64_t element_offset, const MaskKey& key,
                 std::mt19937_64& random) {
  const CompactLayout layout{numel, element_offset};
  const int64_t kept = reference_count(numel, element_offset, key);
  const ScanLayout scan = scan_layout(chunk_count(layout));
  if (scan.chunks_per_segment > 1) ++coverage.multi_chunk_segments;
  constexpr int kGuard = 16;          // elements either side of every buffer, which must stay untouched
  constexpr Bits kSentinel = Bits(0xab);

  // The reference, from the definition: kept elements in row-major order.
  std::vector<Bits> full(numel), values(kept);
  for (auto& x : full) x = nonzero_bits<Bits>(random);
  for (auto& x : values) x = nonzero_bits<Bits>(random);
  std::vector<Bits> expected_full(numel), expected_values;
  for (int64_t k = 0, rank = 0; k < numel; ++k) {
    const bool kept_k = keeps_element(element_offset + k, key);
    expected_full[k] = kept_k ? values[rank++] : Bits(0);
    if (kept_k) expected_values.push_back(full[k]);
  }

  // The state as a CUDA kernel would read it; the by-value source carries only the threshold.
  const int64_t state[2] = {static_cast<int64_t>(key.seed), static_cast<int64_t>(key.offset)};
  const MaskKeySource by_value{nullptr, key};
  const MaskKeySource from_memory{state, MaskKey{0, 0, key.threshold}};
  const uint64_t thread_counts[] = {1, 7, 256, 5000};
  for (const uint64_t threads : thread_counts) {
    Scratch scratch = simulate_count(layout, threads % 2 == 0 ? by_value : from_memory, threads);
    CHECK(scratch.total == kept, "count: numel %lld offset %llu threads %llu: %lld != %lld",
          static_cast<long long>(numel), static_cast<unsigned long long>(element_offset),
          static_cast<unsigned long long>(threads), static_cast<long long>(scratch.total),
          static_cast<long long>(kept));
    simulate_ranks(layout, scratch, threads);

    // Views of the full matrix starting 0-3 elements past a 16-byte boundary: the vectorized
    // and the element-wise paths.
    for (int shift = 0; shift < 4; ++shift) {
      // Aligned storage with guards; the view starts `shift` elements after a 16-byte boundary.
      std::vector<Vector<Bits>> storage((numel + 2 * kGuard + 8) * sizeof(Bits) / kVectorBytes + 2);
      Bits* base = storage.front().lane + kGuard;
      Bits* view = base + shift;
      const size_t storage_elements = storage.size() * (kVectorBytes / sizeof(Bits));
      auto guards_intact = [&](const Bits* begin, int64_t length) {
        const Bits* all = storage.front().lane;
        for (size_t i = 0; i < storage_elements; ++i) {
          if ((all + i < begin || all + i >= begin + length) && all[i] != kSentinel) return false;
        }
        return true;
      };
      const bool vectorized = chunks_are_aligned<Bits>(view, element_offset);
      ++(vectorized ? coverage.vectorized : coverage.element_wise);

      // Expand.
      std::fill(storage.front().lane, storage.front().lane + storage_elements, kSentinel);
      ExpandArgs<Bits> expand{values.data(), kept, view,
                               scratch.keep_bits.data(), scratch.chunk_counts.data(), vectorized};
      for (uint64_t t = 0; t < threads; ++t) expand_thread(layout, expand, t, threads);
      CHECK(test::same_bytes(view, expected_full.data(), numel * sizeof(Bits)),
            "expand: %zu-byte, numel %lld, offset %llu, shift %d, threads %llu", sizeof(Bits),
            static_cast<long long>(numel), static_cast<unsigned long long>(element_offset), shift,
            static_cast<unsigned long long>(threads));
      CHECK(guards_intact(view, numel), "expand wrote outside the matrix: numel %lld shift %d",
            static_cast<long long>(numel), shift);

      // Compress, from the same view filled with the matrix.
      std::memcpy(view, full.data(), numel * sizeof(Bits));
      std::vector<Bits> out(kept + 2 * kGuard, kSentinel);
      CompressArgs<Bits> compress{view, out.data() + kGuard, kept,
                                 scratch.keep_bits.data(), scratch.chunk_counts.data(), vectorized};
      for (uint64_t t = 0; t < threads; ++t) compress_thread(layout, compress, t, threads);
      CHECK(test::same_bytes(out.data() + kGuard, expected_values.data(), kept * sizeof(Bits)),
            "compress: %zu-byte, numel %lld, offset %llu, shift %d, threads %llu", sizeof(Bits),
            static_cast<long long>(numel), static_cast<unsigned long long>(element_offset), shift,
            static_cast<unsigned long long>(threads));
      bool out_guards = true;
      for (int g = 0; g < kGuard; ++g) {
        out_guards = out_guards && out[g] == kSentinel && out[kGuard + kept + g] == kSentinel;
      }
      CHECK(out_guards, "compress wrote outside values: numel %lld", static_cast<long long>(numel));

      // A wrong count (as inside CUDA graph capture, where it is not checked): never a read or
      // write past the buffers. Expand of too few values zeroes the kept elements past the end.
      if (kept > 0 && threads == 7) {
        const int64_t short_count = kept / 2;
        std::fill(storage.front().lane, storage.front().lane + storage_elements, kSentinel);
        std::vector<Bits> short_values(values.begin(), values.begin() + short_count);
        short_values.push_back(kSentinel);  // must never be read
        ExpandArgs<Bits> short_expand{short_values.data(), short_count, view,
                                       scratch.keep_bits.data(), scratch.chunk_counts.data(), vectorized};
        for (uint64_t t = 0; t < threads; ++t) expand_thread(layout, short_expand, t, threads);
        bool clamped = true;
        for (int64_t k = 0, rank = 0; k < numel; ++k) {
          const bool kept_k = keeps_element(element_offset + k, key);
          const Bits want = kept_k && rank < short_count ? values[rank] : Bits(0);
          rank += kept_k;
          clamped = clamped && view[k] == want;
        }
        CHECK(clamped && guards_intact(view, numel), "expand with too few values: numel %lld",
              static_cast<long long>(numel));

        std::memcpy(view, full.data(), numel * sizeof(Bits));
        std::vector<Bits> short_out(short_count + kGuard, kSentinel);
        CompressArgs<Bits> short_compress{view, short_out.data(), short_count,
                                         scratch.keep_bits.data(), scratch.chunk_counts.data(), vectorized};
        for (uint64_t t = 0; t < threads; ++t) compress_thread(layout, short_compress, t, threads);
        bool tail_untouched = true;
        for (int g = 0; g < kGuard; ++g) tail_untouched = tail_untouched && short_out[short_count + g] == kSentinel;
        CHECK(tail_untouched && test::same_bytes(short_out.data(), expected_values.data(), short_count * sizeof(Bits)),
              "compress into too few values: numel %lld", static_cast<long long>(numel));
      }
    }
  }
}

template <typename Bits>
void check_all(Coverage& coverage) {
  const MaskKey keys[] = {{0x0123456789abcdefull, 0xfedcba9876543210ull, keep_threshold(0.3)},
                          {0xffffffffffffffffull, 0, keep_threshold(1.0)},
                          {7, 0xffffffffffffffffull, keep_threshold(0.0)},
                          {42, 43, keep_threshold(0.9)}};
  const int64_t sizes[] = {1, 3, 63, 64, 65, 129, 4099};
  const uint64_t element_offsets[] = {0, 1, 63, 64, 100, (uint64_t{1} << 33) + 5};
  std::mt19937_64 random(sizeof(Bits));
  for (const MaskKey& key : keys) {
    for (const int64_t numel : sizes) {
      for (const uint64_t element_offset : element_offsets) {
        check_shard<Bits>(coverage, numel, element_offset, key, random);
      }
    }
  }
  // More chunks than scan segments, so segments hold several chunks (and a partial last one).
  check_shard<Bits>(coverage, kMaxScanSegments * kChunkElements * 2 + 37, 3, keys[0], random);
}

void check_chunk_bits_edges() {
  const MaskKey all{1, 2, keep_threshold(1.0)};
  // A shard of 10 elements starting at global 60 spans chunk 0 (60-63) and chunk 1 (64-69).
  const CompactLayout layout{10, 60};
  CHECK(chunk_count(layout) == 2, "%llu chunks", static_cast<unsigned long long>(chunk_count(layout)));
  CHECK(chunk_keep_bits(layout, all, 0) == 0xf000000000000000ull, "first chunk bits");
  CHECK(chunk_keep_bits(layout, all, 1) == 0x3full, "last chunk bits");
  const CompactLayout whole{128, 0};
  CHECK(chunk_keep_bits(whole, all, 1) == ~uint64_t{0}, "whole chunk bits");
  const ScanLayout small = scan_layout(5);
  CHECK(small.chunks_per_segment == 1 && small.segments == 5, "scan of 5 chunks");
  const ScanLayout large = scan_layout(kMaxScanSegments * 3 + 1);
  CHECK(large.segments <= kMaxScanSegments && large.chunks_per_segment * large.segments >= large.chunks,
        "scan of many chunks: %llu segments", static_cast<unsigned long long>(large.segments));
}

}  // namespace

int main() {
  check_chunk_bits_edges();
  Coverage coverage;
  check_all<uint16_t>(coverage);
  check_all<uint32_t>(coverage);
  check_all<uint64_t>(coverage);
  CHECK(coverage.vectorized > 0 && coverage.element_wise > 0 && coverage.multi_chunk_segments > 0,
        "vectorized %d, element-wise %d, multi-chunk segments %d", coverage.vectorized,
        coverage.element_wise, coverage.multi_chunk_segments);
  std::printf("simulated compact launches: %d vectorized, %d element-wise configurations\n",
              coverage.vectorized, coverage.element_wise);
  return test::finish("compact_simulated_cuda_launch");
}
