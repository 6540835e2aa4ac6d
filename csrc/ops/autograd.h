// bernoulli_mask_apply with its history in one step, for the module's eager call (the op's own
// Autograd kernel is a torch::autograd::Function, which compiled autograd supports).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace tinybig_cuda {

// bernoulli_mask_apply(w, p, rng_state, element_offset) with its backward recorded when w requires
// grad; with output_sizes, the result is viewed as that shape (the backward returns w's shape),
// which costs no autograd view of its own.
at::Tensor mask_apply_with_history(const at::Tensor& w, double p, const at::Tensor& rng_state,
                                   const c10::SymInt& element_offset,
                                   std::optional<c10::SymIntArrayRef> output_sizes);

}  // namespace tinybig_cuda
