// The CPU kernel of the masking ops: the masked copy of masked_copy.cpp, split over threads.
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "core/cpu/masked_copy.h"
#include "core/element_size.h"
#include "core/mask_window.h"
#include "ops/mask_key.h"
#include "ops/masking.h"

namespace tinybig_cuda {
namespace {

// Elements per task: enough work (~a few microseconds) to amortise waking a thread.
constexpr int64_t kElementsPerTask = 1 << 15;
// A strided row is gathered this many elements at a time into a buffer on the stack (4 KiB at
// 8 bytes), which the contiguous masked copy then reads while it is in L1.
constexpr int64_t kGatherElements = 512;

void gather(const char* input, int64_t input_stride, int element_size, int64_t count, char* buffer) {
  visit_element_bits(element_size, [&](auto bits) {
    using Bits = decltype(bits);
    Bits* out = reinterpret_cast<Bits*>(buffer);
    for (int64_t i = 0; i < count; ++i) std::memcpy(out + i, input + i * input_stride, sizeof(Bits));
  });
}

// Masks `count` elements whose input lies `input_stride` bytes apart into contiguous output, the
// first being global element `first`. A stride-0 row (an expanded scalar: the gradient of
// `.sum()`) fills the buffer once; any other stride is gathered chunk by chunk. Chunks start at
// global multiples of kGatherElements, so only a row's ends miss the vector paths' alignment.
void masked_copy_strided_row(CpuIsa isa, const char* input, int64_t input_stride, char* output,
                             int element_size, int64_t count, uint64_t first, const MaskKey& key) {
  if (input_stride == element_size) {
    return masked_copy_range(isa, input, output, element_size, 0, count, first, key);
  }
  alignas(64) char buffer[kGatherElements * sizeof(uint64_t)];
  const bool broadcast = input_stride == 0;
  if (broadcast) gather(input, 0, element_size, std::min(count, kGatherElements), buffer);
  for (int64_t done = 0; done < count;) {
    const int64_t to_boundary = kGatherElements - static_cast<int64_t>((first + done) % kGatherElements);
    const int64_t chunk = std::min(count - done, to_boundary);
    if (!broadcast) gather(input + done * input_stride, input_stride, element_size, chunk, buffer);
    masked_copy_range(isa, buffer, output + done * element_size, element_size, 0, chunk,
                      first + done, key);
    done += chunk;
  }
}

void masked_copy_cpu(const at::Tensor& input, at::Tensor& output, double p,
                     const at::Tensor& rng_state, const MaskWindow& window) {
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const int element_size = static_cast<int>(input.element_size());
  char* const out = static_cast<char*>(output.mutable_data_ptr());
  const auto masked_copy_in_memory_order = [&](const void* in) {
    const char* const in_bytes = static_cast<const char*>(in);
    at::parallel_for(0, output.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
      for_each_run(window, begin, end, [&](int64_t local, int64_t count, uint64_t global) {
        masked_copy_range(isa, in_bytes + local * element_size, out + local * element_size,
                          element_size, 0, count, global, key);
      });
    });
  };
  if (input.is_contiguous()) return masked_copy_in_memory_order(input.const_data_ptr());
  if (input.stride(-1) * element_size > 64) {
    // Each element of a row on its own cache line (a transposed gradient): read in the row-major
    // order the mask needs, a row would miss the cache at every element. torch's copy picks a
    // cache-friendly order (a hand-tiled gather measured slower here); the mask is then applied to
    // the output in place.
    output.copy_(input);
    return masked_copy_in_memory_order(out);
  }
  // Rows whose elements share cache lines (a slice, every k-th column, an expanded row or scalar):
  // walked in the output's row-major order (linear iteration), one row of coalesced dimensions at
  // a time; an output element's place in memory is its logical index.
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(output)
                                .add_input(input)
                                .resize_outputs(false)
                                .enforce_linear_iteration()
                                .build();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        TORCH_INTERNAL_ASSERT(size0 == 1 || strides[0] == element_size,
                              "the contiguous output is walked in memory order");
        for (int64_t row = 0; row < size1; ++row) {
          char* out_row = data[0] + row * strides[2];
          const char* in_row = data[1] + row * strides[3];
          const int64_t first = (out_row - out) / element_size;
          // An iterator row may span several rows of a window: each piece has its own start.
          for_each_run(window, first, first + size0, [&](int64_t local, int64_t count, uint64_t global) {
            const int64_t skipped = local - first;
            masked_copy_strided_row(isa, in_row + skipped * strides[1], strides[1],
                                    out_row + skipped * element_size, element_size, count, global,
                                    key);
          });
        }
      },
      kElementsPerTask);
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { register_masking_ops(m, {masked_copy_cpu}); }

}  // namespace tinybig_cuda
