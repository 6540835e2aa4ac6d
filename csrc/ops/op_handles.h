// Typed dispatcher handles of the tinybig_cuda ops, for C++ code that calls an op through the
// dispatcher (so autograd, tracing and every registered device see the call).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace tinybig_cuda {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline at::Tensor call_mask_apply(const at::Tensor& w, double p, const at::Tensor& rng_state,
                                  const c10::SymInt& element_offset,
                                  const std::optional<c10::SymInt>& row_length) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, double, const at::Tensor&, c10::SymInt,
                         std::optional<c10::SymInt>)>("tinybig_cuda::bernoulli_mask_apply");
  return op.call(w, p, rng_state, element_offset, row_length);
}

}  // namespace tinybig_cuda
