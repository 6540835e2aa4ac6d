// Autograd for the tinybig_cuda ops that take data, in C++: a differentiable call costs a few
// microseconds instead of tens through a Python autograd kernel, and forward-mode AD and the
// torch.func transforms refuse these ops with an error instead of silently dropping tangents.
//
// Every op is linear in its tensor input with a 0/1 Jacobian, and only the 16-byte rng_state and a
// few integers are saved. Each backward calls the ops themselves (not kernels), so double backward
// works too:
//   bernoulli_mask_apply:    diagonal Jacobian, its own backward;
//   bernoulli_mask_expand:   backward is bernoulli_mask_compress, and the other way round.
#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "ops/autograd.h"
#include "ops/masked_linear.h"

#include "ops/op_handles.h"
#include "ops/torch_compat.h"

namespace tinybig_cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor mask_expand(const at::Tensor& values, double p, const at::Tensor& rng_state,
                       c10::SymIntArrayRef shape, const c10::SymInt& element_offset) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, double, const at::Tensor&,
                                            c10::SymIntArrayRef, c10::SymInt)>(
      "tinybig_cuda::bernoulli_mask_expand");
  return op.call(values, p, rng_state, shape, element_offset);
}

at::Tensor mask_compress(const at::Tensor& full, double p, const at::Tensor& rng_state,
                         const c10::SymInt& kept_count, const c10::SymInt& element_offset) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, double, const at::Tensor&,
                                            c10::SymInt, c10::SymInt)>(
      "tinybig_cuda::bernoulli_mask_compress");
  return op.call(full, p, rng_state, kept_count, element_offset);
}

// Saves what every backward needs: the state (as a tensor, so in-place changes before the
// backward are caught), p and the element offset.
void save_mask(AutogradContext* context, const at::Tensor& rng_state, double p,
               const c10::SymInt& element_offset) {
  context->save_for_backward({rng_state});
  context->saved_data["p"] = p;
  context->saved_data["element_offset"] = element_offset;
}

struct SavedMask {
  at::Tensor rng_state;
  double p;
  c10::SymInt element_offset;
};

SavedMask load_mask(AutogradContext* context) {
  return {context->get_saved_variables()[0], context->saved_data["p"].toDouble(),
          context->saved_data["element_offset"].toSymInt()};
}

// bernoulli_mask_apply's backward, the one both recorders below run: the same mask applied to the
// gradient, through the dispatcher (with autograd), so a double backward is recorded too.
at::Tensor mask_apply_backward(const at::Tensor& grad, double p, const at::Tensor& rng_state,
                               const c10::SymInt& element_offset, const std::optional<c10::SymInt>& row_length) {
  return call_mask_apply(grad, p, rng_state, element_offset, row_length);
}

// What torch::autograd::Function checks before it records anything, for the calls that record no
// Function: no torch.func transform, and no forward-mode tangent (there is no jvp).
void check_reverse_mode_only(const at::Tensor& w) {
  if (const auto& functorch = at::functorch::functorchTLSAccessor()) {
    functorch->checkSupportsCppAutogradFunction();
  }
  TORCH_CHECK(!torch::autograd::isFwGradDefined(w),
              "tinybig_cuda.bernoulli_mask_apply: forward-mode AD got a tangent for w, but jvp is not "
              "implemented for this op; use reverse mode (backward)");
}

// The op's recorder: a torch::autograd::Function, which compiled autograd supports.
class MaskApply : public torch::autograd::Function<MaskApply> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& w, double p,
                            const at::Tensor& rng_state, c10::SymInt element_offset,
                            std::optional<c10::SymInt> row_length) {
    save_mask(context, rng_state, p, element_offset);
    context->saved_data["row_length"] = row_length;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_mask_apply(w, p, rng_state, element_offset, row_length);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const SavedMask mask = load_mask(context);
    return {mask_apply_backward(grad_outputs[0], mask.p, mask.rng_state, mask.element_offset,
                                context->saved_data["row_length"].toOptional<c10::SymInt>()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The op's Autograd kernel: MaskApply where a gradient can flow to w; otherwise (grad disabled,
// or a w that requires none) the kernel below, with no node made, after MaskApply's checks.
at::Tensor mask_apply_autograd(const at::Tensor& w, double p, const at::Tensor& rng_state,
                               c10::SymInt element_offset, std::optional<c10::SymInt> row_length) {
  if (torch::autograd::compute_requires_grad(w)) {
    return MaskApply::apply(w, p, rng_state, std::move(element_offset), std::move(row_length));
  }
  check_reverse_mode_only(w);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return call_mask_apply(w, p, rng_state, element_offset, row_length);
}

// The module's eager call (mask_apply_with_history) records the same backward as this plain Node
// rather than MaskApply: a torch::autograd::Function's context (a string-keyed map of saved
// values, input and output bookkeeping) costs more than the op itself at tinyBIG's sizes. It has
// no compiled-autograd support, so the module takes the op (and MaskApply) while compiled autograd
// is on. The module masks whole tensors, so this node has no row_length.
struct MaskApplyBackward final : public torch::autograd::Node {
  torch::autograd::SavedVariable rng_state;  // checks, at unpack, that no one wrote to the state
  double p = 0.0;
  c10::SymInt element_offset;
  std::vector<c10::SymInt> input_sizes;  // w's; the output may be a view of another shape

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {at::Tensor()};
    at::Tensor grad_w = mask_apply_backward(grads[0], p, rng_state.unpack(getptr()), element_offset, std::nullopt);
    return {grad_w.sym_sizes() == c10::SymIntArrayRef(input_sizes) ? grad_w : grad_w.view_symint(input_sizes)};
  }
  std::string name() const override { return "BernoulliMaskApplyBackward"; }
  void release_variables() override { rng_state.reset_data(); }
};

at::Tensor mask_apply_p_tensor(const at::Tensor& w, const at::Tensor& p, const at::Tensor& rng_state,
                               const c10::SymInt& element_offset, const std::optional<c10::SymInt>& row_length) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt,
                                            std::optional<c10::SymInt>)>("tinybig_cuda::bernoulli_mask_apply_p_tensor");
  return op.call(w, p, rng_state, element_offset, row_length);
}

// bernoulli_mask_apply_p_tensor: MaskApply's backward, with p saved as the tensor it came as.
class MaskApplyPTensor : public torch::autograd::Function<MaskApplyPTensor> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& w, const at::Tensor& p,
                            const at::Tensor& rng_state, c10::SymInt element_offset,
                            std::optional<c10::SymInt> row_length) {
    context->save_for_backward({rng_state, p});  // writing into either before the backward raises
    context->saved_data["element_offset"] = element_offset;
    context->saved_data["row_length"] = row_length;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return mask_apply_p_tensor(w, p, rng_state, element_offset, row_length);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    return {mask_apply_p_tensor(grad_outputs[0], saved[1], saved[0],
                                context->saved_data["element_offset"].toSymInt(),
                                context->saved_data["row_length"].toOptional<c10::SymInt>()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class MaskExpand : public torch::autograd::Function<MaskExpand> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& values, double p,
                            const at::Tensor& rng_state, c10::SymIntArrayRef shape,
                            c10::SymInt element_offset) {
    save_mask(context, rng_state, p, element_offset);
    context->saved_data["kept_count"] = values.sym_numel();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return mask_expand(values, p, rng_state, shape, element_offset);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const SavedMask mask = load_mask(context);
    const at::Tensor grad_values =
        mask_compress(grad_outputs[0], mask.p, mask.rng_state,
                      context->saved_data["kept_count"].toSymInt(), mask.element_offset);
    return {grad_values, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class MaskCompress : public torch::autograd::Function<MaskCompress> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& full, double p,
                            const at::Tensor& rng_state, c10::SymInt kept_count,
                            c10::SymInt element_offset) {
    save_mask(context, rng_state, p, element_offset);
    context->saved_data["shape"] = full.sym_sizes();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return mask_compress(full, p, rng_state, kept_count, element_offset);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const SavedMask mask = load_mask(context);
    const std::vector<c10::SymInt> shape = context->saved_data["shape"].toSymIntVector();
    return {mask_expand(grad_outputs[0], mask.p, mask.rng_state, shape, mask.element_offset),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor mask_apply_with_history(const at::Tensor& w, double p, const at::Tensor& rng_state,
                                   const c10::SymInt& element_offset,
                                   std::optional<c10::SymIntArrayRef> output_sizes) {
  check_reverse_mode_only(w);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = call_mask_apply(w, p, rng_state, element_offset, std::nullopt);
    // Below autograd a view is a plain alias: the node below owns the whole history.
    if (output_sizes) output = output.view_symint(*output_sizes);
  }
  if (torch::autograd::compute_requires_grad(w)) {
    auto node = make_autograd_node<MaskApplyBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(w));
    node->rng_state = torch::autograd::SavedVariable(rng_state, /*is_output=*/false);
    node->p = p;
    node->element_offset = element_offset;
    node->input_sizes = w.sym_sizes().vec();
    torch::autograd::set_history(output, node);
  }
  return output;
}

TORCH_LIBRARY_IMPL(tinybig_cuda, Autograd, m) {
  m.impl("bernoulli_mask_apply", mask_apply_autograd);
  m.impl("bernoulli_mask_apply_p_tensor",
         [](const at::Tensor& w, const at::Tensor& p, const at::Tensor& rng_state, c10::SymInt element_offset,
            std::optional<c10::SymInt> row_length) {
           // The mask is a step function of p: no gradient could reach it, so refuse rather than
           // leave p.grad silently None.
           TORCH_CHECK_VALUE(!p.requires_grad(),
                             "tinybig_cuda.bernoulli_mask_apply: expected p not to require grad (the output has no "
                             "gradient with respect to p), but got a p that requires grad; pass p.detach()");
           return MaskApplyPTensor::apply(w, p, rng_state, std::move(element_offset), std::move(row_length));
         });
  m.impl("bernoulli_mask_expand",
         [](const at::Tensor& values, double p, const at::Tensor& rng_state,
            c10::SymIntArrayRef shape, c10::SymInt element_offset) {
           return MaskExpand::apply(values, p, rng_state, shape, std::move(element_offset));
         });
  m.impl("bernoulli_mask_compress",
         [](const at::Tensor& full, double p, const at::Tensor& rng_state, c10::SymInt kept_count,
            c10::SymInt element_offset) {
           return MaskCompress::apply(full, p, rng_state, std::move(kept_count),
                                      std::move(element_offset));
         });
  m.impl("masked_linear", masked_linear_autograd);
}

}  // namespace tinybig_cuda
