// Host-side pieces shared by the CPU and CUDA registrations of the tinybig_cuda ops:
// argument checks, output allocation, and the device-independent halves of each op.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

#include "mask_window.h"
#include "philox_mask.h"

namespace tinybig_cuda {

// Writes output[k] = input's row-major logical element k where global element
// global_index(window, k) is kept, and zero bits (+0.0, false) elsewhere. The output is
// contiguous; the input may have any strides (a gradient is often expanded or transposed), so each
// device reads it in place or makes it contiguous itself. Both are non-empty, of one dtype, on one
// device.
using MaskedCopyKernel = void (*)(const at::Tensor& input, at::Tensor& output, double p,
                                  const at::Tensor& rng_state, const MaskWindow& window);

// The checks of bernoulli_mask_apply's arguments, shared with the kernels that have no masked
// copy. Returns w's window in the mask stream.
MaskWindow check_mask_apply_arguments(const at::Tensor& w, double p, const at::Tensor& rng_state,
                                      int64_t element_offset, std::optional<int64_t> row_length);

at::Tensor bernoulli_mask_apply_with(MaskedCopyKernel kernel, const at::Tensor& w, double p,
                                     const at::Tensor& rng_state, int64_t element_offset,
                                     std::optional<int64_t> row_length);

at::Tensor bernoulli_mask_with(MaskedCopyKernel kernel, at::IntArrayRef shape, double p,
                               const at::Tensor& rng_state, int64_t element_offset,
                               std::optional<int64_t> row_length);

// Registers bernoulli_mask_apply and bernoulli_mask for one device, given its masked copy.
template <MaskedCopyKernel kernel>
void register_masking_ops(torch::Library& library) {
  library.impl("bernoulli_mask_apply", [](const at::Tensor& w, double p,
                                          const at::Tensor& rng_state, int64_t element_offset,
                                          std::optional<int64_t> row_length) {
    return bernoulli_mask_apply_with(kernel, w, p, rng_state, element_offset, row_length);
  });
  library.impl("bernoulli_mask", [](at::IntArrayRef shape, double p, const at::Tensor& rng_state,
                                    int64_t element_offset, std::optional<int64_t> row_length) {
    return bernoulli_mask_with(kernel, shape, p, rng_state, element_offset, row_length);
  });
}

}  // namespace tinybig_cuda
