// Runs the CUDA kernel's per-thread body on the host for every thread of simulated launches
// and compares every output bit with the CPU's scalar path, for whole tensors and windows.
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "core/cpu/masked_copy.h"
#include "core/cuda/masked_copy_body.h"
#include "core/mask_window.h"

using namespace tinybig_cuda;

namespace {

struct Coverage {
  int vectorized = 0;
  int scalar_only = 0;
};

// The CPU scalar path's output for a window: each row masked by its own run of global indices.
template <typename Bits>
void expected_output(const Bits* input, Bits* expected, int64_t numel, const MaskWindow& window,
                     const MaskKey& key) {
  for_each_run(window, 0, numel, [&](int64_t local, int64_t count, uint64_t global) {
    masked_copy_range(CpuIsa::kScalar, input + local, expected + local, sizeof(Bits), 0, count,
                      global, key);
  });
}

template <typename Bits>
void check_launches(Coverage& coverage) {
  const MaskKey keys[] = {{0x0123456789abcdefull, 0xfedcba9876543210ull, keep_threshold(0.3)},
                          {0xffffffffffffffffull, 0, keep_threshold(1.0)},
                          {7, 0xffffffffffffffffull, keep_threshold(0.0)}};
  const int64_t group = group_elements<Bits>();
  // {numel, width, row_length - width}: whole tensors (one row), then windows of several rows
  // (a shard of columns), rows shorter and longer than a group, gaps that keep or break alignment.
  const int64_t geometries[][3] = {{1, 1, 0},         {3, 3, 0},          {4, 4, 0},
                                   {5, 5, 0},         {4099, 4099, 0},    {group + 1, group + 1, 0},
                                   {2 * group - 1, 2 * group - 1, 0},     {15, 3, 1},
                                   {5 * group, group, group},             {7 * (group + 1), group + 1, 5},
                                   {4 * (2 * group + 3), 2 * group + 3, 2 * group}};
  const uint64_t element_offsets[] = {0, 1, 2, 3, (uint64_t{1} << 33) + 5};
  const int grids[] = {1, 3, 64};
  const int blocks[] = {1, 32, 256};

  std::mt19937_64 random(42);
  for (const auto& geometry : geometries) {
    const int64_t numel = geometry[0];
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
        const MaskWindow window = make_mask_window(element_offset, numel, geometry[1],
                                                   static_cast<uint64_t>(geometry[1] + geometry[2]));
        for (const MaskKey& key : keys) {
          expected_output(input, expected.data(), numel, window, key);
          const MaskedCopyArgs<Bits> args{input, output, numel, window,
                                          groups_are_aligned<Bits>(input, output, window, numel)};
          ++(args.vectorized ? coverage.vectorized : coverage.scalar_only);
          for (const int grid : grids) {
            for (const int block : blocks) {
              std::memset(output_storage.data(), 0xab, output_storage.size() * kVectorBytes);
              const uint64_t threads = static_cast<uint64_t>(grid) * block;
              for (uint64_t thread = 0; thread < threads; ++thread) {
                masked_copy_thread(args, key, thread, threads);
              }
              const bool same = test::same_bytes(output, expected.data(), numel * sizeof(Bits));
              CHECK(same, "%zu-byte elements: numel %lld in rows of %lld, row_length %llu, shift %d, offset %llu, grid %d x %d",
                    sizeof(Bits), static_cast<long long>(numel), static_cast<long long>(window.width),
                    static_cast<unsigned long long>(window.row_length), shift,
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
