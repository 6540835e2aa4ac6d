// masked_linear: F.linear(x, bernoulli_mask_apply(w, p, rng_state), bias) without the whole masked
// weight ever existing. The kernels live in ops/masked_linear.cpp; this is its Autograd kernel,
// registered in ops/autograd.cpp beside the other ops'.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace tinybig_cuda {

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                                  const std::optional<at::Tensor>& bias);

}  // namespace tinybig_cuda
