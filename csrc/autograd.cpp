// Autograd for tinybig_cuda::bernoulli_mask_apply, in C++ so that a call costs microseconds less
// than a Python autograd kernel, torch.func transforms can differentiate it, and forward-mode AD
// raises instead of silently dropping tangents.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace tinybig_cuda {
namespace {

at::Tensor call_mask_apply(const at::Tensor& w, double p, const at::Tensor& rng_state,
                           const c10::SymInt& element_offset) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tinybig_cuda::bernoulli_mask_apply", "")
                             .typed<at::Tensor(const at::Tensor&, double, const at::Tensor&, c10::SymInt)>();
  return op.call(w, p, rng_state, element_offset);
}

class MaskApplyFunction : public torch::autograd::Function<MaskApplyFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* context, const at::Tensor& w,
                            double p, const at::Tensor& rng_state, c10::SymInt element_offset) {
    // Only the 16-byte state is saved: the backward regenerates the mask from it.
    context->save_for_backward({rng_state});
    context->saved_data["p"] = p;
    context->saved_data["element_offset"] = element_offset;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_mask_apply(w, p, rng_state, element_offset);
  }

  // The op is linear in w with a diagonal 0/1 Jacobian, so its backward is the op itself on the
  // incoming gradient; calling the op (with autograd) keeps double backward working.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor rng_state = context->get_saved_variables()[0];
    const at::Tensor grad_w =
        call_mask_apply(grad_outputs[0], context->saved_data["p"].toDouble(), rng_state,
                        context->saved_data["element_offset"].toSymInt());
    return {grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, Autograd, m) {
  m.impl("bernoulli_mask_apply", [](const at::Tensor& w, double p, const at::Tensor& rng_state,
                                    c10::SymInt element_offset) {
    return MaskApplyFunction::apply(w, p, rng_state, std::move(element_offset));
  });
}

}  // namespace tinybig_cuda
