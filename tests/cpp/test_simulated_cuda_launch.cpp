// Runs the CUDA kernel's per-thread body on the host for every thread of simulated launches
// and compares every output bit with the CPU's scalar path.
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "cpu/masked_copy.h"
#include "cuda/masked_copy_body.h"

using namespace tinybig_cuda;

namespace {

struct Coverage {
  int vectorized = 0;
  int scalar_only = 0;
};

template <typename Bits>
void check_launches(Coverage& coverage) {
  const MaskKey keys[] = {{0x0123456789abcdefull, 0xfedcba9876543210ull, keep_threshold(0.3)},
                          {0xffffffffffffffffull, 0, keep_threshold(1.0)},
                          {7, 0xffffffffffffffffull, keep_threshold(0.0)}};
  const int64_t group = group_elements<Bits>();
  const int64_t sizes[] = {1, 3, 4, 5, 4099, group + 1, 2 * group - 1};
  const uint64_t element_offsets[] = {0, 1, 2, 3, (uint64_t{1} << 33) + 5};
  const int grids[] = {1, 3, 64};
  const int blocks[] = {1, 32, 256};

  std::mt19937_64 random(42);
  for (const int64_t numel : sizes) {
    // Over-allocated, 16-byte aligned buffers, so views can start 0-3 elements in.
    std::vector<Vector<Bits>> input_storage(numel * sizeof(Bits) / kVectorBytes + 2);
    std::vector<Vector<Bits>> output_storage(input_storage.size());
    std::vector<Bits> expected(numel);
    for (auto& vector : input_storage) {
      for (auto& lane : vector.lane) lane = static_cast<Bits>(random() | 1);  // never zero
    }
    for (int shift = 0; shift < 4; ++shift) {
      const Bits* input = input_storage.front().lane + shift;
      Bits* output = output_storage.front().lane + shift;
      for (const uint64_t element_offset : element_offsets) {
        for (const MaskKey& key : keys) {
          masked_copy_range(CpuIsa::kScalar, input, expected.data(), sizeof(Bits), 0, numel,
                            element_offset, key);
          const MaskedCopyArgs<Bits> args{input, output, numel, element_offset,
                                          groups_are_aligned<Bits>(input, output, element_offset)};
          ++(args.vectorized ? coverage.vectorized : coverage.scalar_only);
          for (const int grid : grids) {
            for (const int block : blocks) {
              std::memset(output_storage.data(), 0xab, output_storage.size() * kVectorBytes);
              const uint64_t threads = static_cast<uint64_t>(grid) * block;
              for (uint64_t thread = 0; thread < threads; ++thread) {
                masked_copy_thread(args, key, thread, threads);
              }
              const bool same = test::same_bytes(output, expected.data(), numel * sizeof(Bits));
              CHECK(same, "%zu-byte elements: numel %lld, shift %d, offset %llu, grid %d x %d",
                    sizeof(Bits), static_cast<long long>(numel), shift,
                    static_cast<unsigned long long>(element_offset), grid, block);
              // Nothing written outside the view.
              const auto* bytes = reinterpret_cast<const unsigned char*>(output_storage.data());
              const size_t begin = shift * sizeof(Bits), end = begin + numel * sizeof(Bits);
              bool untouched = true;
              for (size_t b = 0; b < output_storage.size() * kVectorBytes; ++b) {
                if ((b < begin || b >= end) && bytes[b] != 0xab) untouched = false;
              }
              CHECK(untouched, "wrote outside the view: numel %lld, shift %d",
                    static_cast<long long>(numel), shift);
            }
          }
        }
      }
    }
  }
}

}  // namespace

int main() {
  Coverage coverage;
  check_launches<uint8_t>(coverage);
  check_launches<uint16_t>(coverage);
  check_launches<uint32_t>(coverage);
  check_launches<uint64_t>(coverage);
  // Both the 16-byte vector path and the element-wise path must have been exercised.
  CHECK(coverage.vectorized > 0 && coverage.scalar_only > 0, "vectorized %d, scalar-only %d",
        coverage.vectorized, coverage.scalar_only);
  std::printf("simulated launches: %d vectorized, %d element-wise configurations\n",
              coverage.vectorized, coverage.scalar_only);
  return test::finish("simulated_cuda_launch");
}
