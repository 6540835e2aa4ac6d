// Host-side pieces shared by the CPU and CUDA registrations of the tinybig_cuda ops:
// argument checks, output allocation, and the device-independent halves of each op.
#pragma once

#include <ATen/core/Tensor.h>

#include "philox_mask.h"

namespace tinybig_cuda {

// Writes output[k] = input[k] where global element element_offset + k is kept, and zero bits
// (+0.0, false) elsewhere. Both tensors are contiguous, non-empty, of one dtype, on one device.
using MaskedCopyKernel = void (*)(const at::Tensor& input, at::Tensor& output, double p,
                                  const at::Tensor& rng_state, uint64_t element_offset);

at::Tensor bernoulli_mask_apply_with(MaskedCopyKernel kernel, const at::Tensor& w, double p,
                                     const at::Tensor& rng_state, int64_t element_offset);

at::Tensor bernoulli_mask_with(MaskedCopyKernel kernel, at::IntArrayRef shape, double p,
                               const at::Tensor& rng_state, int64_t element_offset);

}  // namespace tinybig_cuda
