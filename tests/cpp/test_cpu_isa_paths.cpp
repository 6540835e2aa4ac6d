// The scalar (portable) path gives the bits of the contract's one-block-per-element definition, and
// every other instruction-set path this CPU supports gives the scalar path's bits, for every
// element size, ranges that start and end anywhere in a block, and the threshold edges.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "core/cpu/masked_copy.h"

using namespace tinybig_cuda;

namespace {

template <typename Bits>
void check_against_scalar(CpuIsa isa) {
  const uint64_t thresholds[] = {0, 1, keep_threshold(0.37), uint64_t{1} << 31, 0xffffffffull,
                                 uint64_t{1} << 32};
  const int64_t sizes[] = {1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 127, 1000, 4099};
  const uint64_t element_offsets[] = {0, 1, 3, 6, (uint64_t{1} << 40) + 2};
  std::mt19937_64 random(7);
  for (const int64_t numel : sizes) {
    std::vector<Bits> input(numel + 3), expected(numel + 3), actual(numel + 3);
    for (auto& value : input) value = static_cast<Bits>(random() | 1);
    for (int shift = 0; shift < 3; ++shift) {  // misaligned starts
      for (const uint64_t element_offset : element_offsets) {
        for (const uint64_t threshold : thresholds) {
          const MaskKey key{random(), random(), threshold};
          // A range inside the tensor, as a parallel_for chunk would give.
          const int64_t begin = numel > 8 ? numel / 3 : 0;
          const int64_t end = numel - (numel > 8 ? 1 : 0);
          std::fill(expected.begin(), expected.end(), Bits(0x5a));
          std::fill(actual.begin(), actual.end(), Bits(0x5a));
          masked_copy_range(CpuIsa::kScalar, input.data() + shift, expected.data() + shift,
                            sizeof(Bits), begin, end, element_offset, key);
          masked_copy_range(isa, input.data() + shift, actual.data() + shift, sizeof(Bits), begin,
                            end, element_offset, key);
          CHECK(expected == actual, "%s, %zu-byte elements: numel %lld, range [%lld, %lld), "
                "shift %d, offset %llu, threshold %llu", cpu_isa_name(isa), sizeof(Bits),
                static_cast<long long>(numel), static_cast<long long>(begin),
                static_cast<long long>(end), shift,
                static_cast<unsigned long long>(element_offset),
                static_cast<unsigned long long>(threshold));
          // In place (the CPU op masks a copied strided input where it lies): the same bits.
          std::vector<Bits> in_place(input);
          std::copy(expected.begin(), expected.begin() + shift + begin, in_place.begin());
          std::copy(expected.begin() + shift + end, expected.end(), in_place.begin() + shift + end);
          masked_copy_range(isa, in_place.data() + shift, in_place.data() + shift, sizeof(Bits),
                            begin, end, element_offset, key);
          CHECK(in_place == expected, "%s in place, %zu-byte elements: numel %lld, shift %d",
                cpu_isa_name(isa), sizeof(Bits), static_cast<long long>(numel), shift);
        }
      }
    }
  }
}

void check_scalar_against_definition() {
  std::mt19937_64 random(11);
  for (const double p : {0.0, 0.3, 0.5, 1.0}) {
    for (const int64_t numel : {1, 5, 12, 13, 100, 1031}) {
      for (const uint64_t element_offset : {uint64_t{0}, uint64_t{2}, (uint64_t{1} << 35) + 1}) {
        const MaskKey key{random(), random(), keep_threshold(p)};
        std::vector<uint32_t> input(numel), output(numel);
        for (auto& value : input) value = static_cast<uint32_t>(random() | 1);
        masked_copy_range(CpuIsa::kScalar, input.data(), output.data(), 4, 0, numel, element_offset, key);
        for (int64_t k = 0; k < numel; ++k) {
          const uint32_t expected = keeps_element(element_offset + k, key) ? input[k] : 0;
          CHECK(output[k] == expected, "scalar: p %g, numel %lld, offset %llu, element %lld", p,
                static_cast<long long>(numel), static_cast<unsigned long long>(element_offset),
                static_cast<long long>(k));
        }
      }
    }
  }
}

}  // namespace

int main() {
  check_scalar_against_definition();
  int paths = 0;
  for (const CpuIsa isa : kAllCpuIsas) {
    if (!cpu_supports(isa)) {
      std::printf("%s: not supported by this CPU, skipped\n", cpu_isa_name(isa));
      continue;
    }
    ++paths;
    check_against_scalar<uint8_t>(isa);
    check_against_scalar<uint16_t>(isa);
    check_against_scalar<uint32_t>(isa);
    check_against_scalar<uint64_t>(isa);
    std::printf("%s: checked against scalar\n", cpu_isa_name(isa));
  }
  CHECK(paths > 0, "no path was checked");
  return test::finish("cpu_isa_paths");
}
