// The masking ops (bernoulli_mask_apply, bernoulli_mask): their device-independent half, and the
// kernel table each device registers.
//
// The half checks the arguments, allocates the output and returns early on empty tensors; a
// device's kernel only fills the output. Registering a device is one line in its folder:
//   TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { register_masking_ops(m, {masked_copy_cpu}); }
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "core/mask_window.h"

namespace tinybig_cuda {

struct MaskingKernels {
  // Writes output[k] = input's row-major logical element k where global element
  // global_index(window, k) is kept, and zero bits (+0.0, false) elsewhere. The output is contiguous; the input may have
  // any strides (a gradient is often expanded or transposed), so each device reads it in place or
  // makes it contiguous itself. Both are non-empty, of one dtype, on one device; the arguments are
  // checked.
  void (*masked_copy)(const at::Tensor& input, at::Tensor& output, double p,
                      const at::Tensor& rng_state, const MaskWindow& window);
};

void register_masking_ops(torch::Library& library, MaskingKernels kernels);

}  // namespace tinybig_cuda
