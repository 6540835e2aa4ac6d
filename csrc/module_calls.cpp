#include "module_calls.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randint.h>

#include <array>
#include <limits>
#include <mutex>

#include "autograd.h"
#include "op_handles.h"

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

at::Tensor masked_fabrication(const at::Tensor& w, int64_t n, int64_t D, double p,
                              const at::Tensor& rng_state) {
  // The op's output is contiguous, so it is viewed as (n, D) rather than w reshaped (which would
  // copy a w that cannot be viewed).
  if (at::functorch::functorchTLSAccessor()) {
    // A torch.func transform may be active: take every dispatch key the op has (vmap's included).
    return call_mask_apply(w, p, rng_state, 0).view({n, D});
  }
  // The op's own autograd, entered directly, with the view folded into its node.
  const std::array<c10::SymInt, 2> matrix_sizes{n, D};
  return mask_apply_with_history(w, p, rng_state, 0, c10::SymIntArrayRef(matrix_sizes));
}

std::tuple<at::Tensor, at::Tensor> masked_fabrication_fresh(const at::Tensor& w, int64_t n,
                                                            int64_t D, double p) {
  at::Tensor rng_state = draw_rng_state(w.device());
  at::Tensor matrix = masked_fabrication(w, n, D, p, rng_state);
  return {std::move(matrix), std::move(rng_state)};
}

}  // namespace tinybig_cuda
