// masked_linear: F.linear(x, bernoulli_mask_apply(w, p, rng_state), bias) without the whole masked
// weight ever existing. The kernels live in ops/masked_linear.cpp (every device) and
// ops/cpu/masked_linear_cpu.cpp (the CPU's small batches).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>

#include <optional>
#include <vector>

namespace tinybig_cuda {

// `sizes` with its last dimension replaced by `last`.
std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last);

// `tensor` (..., last) as a matrix (rows, last); reshape({-1, last}) fails when last is 0.
at::Tensor as_matrix(const at::Tensor& tensor);

// The forward's argument checks: every kernel makes them first.
void check_masked_linear(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                         const std::optional<at::Tensor>& bias);

// The forward as blocks of masked rows multiplied by torch's BLAS, on any device; checked arguments.
at::Tensor masked_linear_blocked(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                                 const std::optional<at::Tensor>& bias);

// The forward of a device with a fused small-batch kernel (the CPU's, CUDA's): after the checks, a
// batch of 1 to `max_batch` rows of x in float32 or float64, with w contiguous, goes to
// matvec(x_rows, y), x_rows (batch, in_features) with contiguous rows and y (batch, out_features)
// to fill; the bias is added after. Every other call takes the blocked product.
at::Tensor masked_linear_fused_or_blocked(const at::Tensor& x, const at::Tensor& w, double p,
                                          const at::Tensor& rng_state, const std::optional<at::Tensor>& bias,
                                          int64_t max_batch,
                                          c10::function_ref<void(const at::Tensor& x_rows, at::Tensor& y)> matvec);

// The Autograd kernel, registered in ops/autograd.cpp beside the other ops'.

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                                  const std::optional<at::Tensor>& bias);

}  // namespace tinybig_cuda
