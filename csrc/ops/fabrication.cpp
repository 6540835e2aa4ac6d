#include "ops/fabrication.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/randint.h>

#include <array>
#include <limits>
#include <mutex>

#include "ops/autograd.h"
#include "ops/op_handles.h"

namespace tinybig_cuda {

at::Tensor draw_rng_state(const c10::Device& device) {
  if (device.is_cpu()) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    at::Tensor state = at::empty({2}, at::kLong);
    int64_t* words = state.data_ptr<int64_t>();
    const std::lock_guard<std::mutex> lock(generator.mutex());
    auto* cpu_generator = generator.get<at::CPUGeneratorImpl>();
    words[0] = static_cast<int64_t>(cpu_generator->random64());
    words[1] = static_cast<int64_t>(cpu_generator->random64());
    return state;
  }
  constexpr int64_t lowest = std::numeric_limits<int64_t>::min();
  constexpr int64_t highest = std::numeric_limits<int64_t>::max();
  return at::randint(lowest, highest, {2}, at::TensorOptions().dtype(at::kLong).device(device));
}

at::Tensor rng_state_on(const at::Tensor& state, const c10::Device& device) {
  if (state.device() == device) return state;
  // Made outside inference mode: the module keeps it as its buffer, and an inference tensor could
  // neither be saved for backward in training nor be written by reset_parameters().
  const c10::InferenceMode outside_inference_mode(/*enabled=*/false);
  if (device.is_meta()) return at::empty_like(state, state.options().device(device));  // no data to copy
  return state.to(device);
}

namespace {

at::Tensor fresh_buffer(const c10::Device& device) {
  const c10::InferenceMode outside_inference_mode(/*enabled=*/false);
  return draw_rng_state(device);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> masked_fabrication(const at::Tensor& w, int64_t n, int64_t D,
                                                      double p,
                                                      const std::optional<at::Tensor>& rng_state) {
  at::Tensor state = rng_state ? rng_state_on(*rng_state, w.device()) : fresh_buffer(w.device());
  at::Tensor matrix;
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) {
    // A torch.func transform is active: take every dispatch key the op has (vmap's included).
    matrix = call_mask_apply(w, p, state, 0, std::nullopt).view({n, D});
  } else {
    // The op's own autograd, entered directly, with the (n, D) view folded into its node. Viewing
    // the contiguous output, rather than reshaping w, never copies a w that cannot be viewed.
    const std::array<c10::SymInt, 2> matrix_sizes{n, D};
    matrix = mask_apply_with_history(w, p, state, 0, c10::SymIntArrayRef(matrix_sizes));
  }
  return {std::move(matrix), std::move(state)};
}

}  // namespace tinybig_cuda
