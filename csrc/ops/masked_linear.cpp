// masked_linear and its two backward ops, for every device at once: the masked weight is made a
// block of rows at a time by bernoulli_mask_apply (each block one run of w's mask, placed by its
// element_offset: docs/contract.md, 'Element offsets and shards') into a buffer of 1 to 16 MiB,
// and torch's BLAS (cuBLAS on CUDA) multiplies it into its slice of the output. So the forward's
// only weight-sized memory traffic is reading w once, and no pass keeps a masked weight. (The CPU
// and CUDA kernels, ops/cpu/masked_linear_cpu.cpp and ops/cuda/masked_linear_cuda.cpp, fuse mask
// and product at small batches and call the blocked forward otherwise.)
//
//   forward       y[:, rows]    = x @ masked(w[rows, :])^T (+ bias[rows])   blocks of rows of w
//   grad input    grad_x       += grad_y[:, rows] @ masked(w[rows, :])
//   grad weight   grad_w[rows, :] = mask ⊙ (grad_y[:, rows]^T @ x)          each block masked while in cache
//
// Large outputs take their memory from the package's CPU output cache (ops/output_memory.h), as
// bernoulli_mask_apply's do, so a training loop does not fault fresh pages in at every call.
#include "ops/masked_linear.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <algorithm>
#include <vector>

#include "ops/argument_checks.h"
#include "ops/op_handles.h"
#include "ops/output_memory.h"
#include "ops/torch_compat.h"

namespace tinybig_cuda {
namespace {

constexpr const char* kOp = "tinybig_cuda.masked_linear";
// A block of masked weight is at least about 1 MiB, so that it is still in the L2 cache when the
// product reads it. BLAS packs the other operand (x, or grad_y) again for every block, so a block
// also has at least four times as many lines as that operand has rows, keeping that re-reading
// under a quarter of the block's own work; up to 16 MiB, which bounds the buffer at large batches.
constexpr int64_t kBlockBytes = int64_t{1} << 20;
constexpr int64_t kMaxBlockBytes = int64_t{16} << 20;
constexpr int64_t kLinesPerOperandRow = 4;

// How many rows of w, each of `line_elements` elements, make one block, for a product with an
// operand (x or grad_y) of `operand_rows` rows.
int64_t lines_per_block(int64_t line_elements, int64_t element_size, int64_t operand_rows) {
  const int64_t line_bytes = std::max<int64_t>(1, line_elements * element_size);
  const int64_t lines = std::max(kBlockBytes / line_bytes, kLinesPerOperandRow * operand_rows);
  return std::max<int64_t>(1, std::min(lines, kMaxBlockBytes / line_bytes));
}

void check_same_dtype_and_device(const char* argument, const at::Tensor& tensor, const at::Tensor& w) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == w.scalar_type(), kOp, ": expected ", argument, " of w's dtype ",
                   w.scalar_type(), ", but got dtype ", tensor.scalar_type());
  TORCH_CHECK_VALUE(tensor.device() == w.device(), kOp, ": expected ", argument, " on w's device ", w.device(),
                    ", but got it on ", tensor.device());
}

}  // namespace

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> result(sizes.begin(), sizes.end());
  result.back() = last;
  return result;
}

at::Tensor as_matrix(const at::Tensor& tensor) {
  const at::IntArrayRef sizes = tensor.sizes();
  return tensor.reshape({c10::multiply_integers(sizes.begin(), sizes.end() - 1), sizes.back()});
}

// tinybig_cuda/weight_drop.py's fake kernel makes the same checks in the same order.
void check_masked_linear(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                         const std::optional<at::Tensor>& bias) {
  check_maskable_dtype(kOp, "w", w);
  TORCH_CHECK_VALUE(w.dim() == 2, kOp, ": expected w of shape (out_features, in_features), but got shape ",
                    w.sizes());
  check_same_dtype_and_device("x", x, w);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == w.size(1), kOp, ": expected x of shape (..., ", w.size(1),
                    ") (in_features, w's second dimension), but got shape ", x.sizes());
  if (bias && bias->defined()) {
    check_same_dtype_and_device("bias", *bias, w);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w.size(0), kOp, ": expected bias of shape (",
                      w.size(0), ",) (out_features, w's first dimension), but got shape ", bias->sizes());
  }
  check_keep_probability(kOp, p);
  check_rng_state(kOp, rng_state, w.device());
}

namespace {

// Rows [first, first + count) of w's mask applied to w: rows follow one another in the mask, so
// the block is one run starting at global element first * in_features.
at::Tensor masked_rows(const at::Tensor& w, int64_t first, int64_t count, double p, const at::Tensor& rng_state) {
  return call_mask_apply(w.narrow(0, first, count), p, rng_state, first * w.size(1), std::nullopt);
}

}  // namespace

at::Tensor masked_linear_blocked(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                                 const std::optional<at::Tensor>& bias) {
  const int64_t out_features = w.size(0);
  const at::Tensor x_rows = as_matrix(x);
  at::Tensor y = empty_output({x_rows.size(0), out_features}, x.options());
  const bool has_bias = bias && bias->defined();
  if (y.numel() > 0) {
    const int64_t block = lines_per_block(w.size(1), w.element_size(), x_rows.size(0));
    for (int64_t first = 0; first < out_features; first += block) {
      const int64_t count = std::min(block, out_features - first);
      at::Tensor y_block = y.narrow(1, first, count);  // BLAS writes the strided slice in place
      const at::Tensor masked_t = masked_rows(w, first, count, p, rng_state).t();
      if (has_bias) {
        at::addmm_out(y_block, bias->narrow(0, first, count), x_rows, masked_t);
      } else {
        at::mm_out(y_block, x_rows, masked_t);
      }
    }
  }
  return y.view(with_last(x.sizes(), out_features));
}

at::Tensor masked_linear_fused_or_blocked(const at::Tensor& x, const at::Tensor& w, double p,
                                          const at::Tensor& rng_state, const std::optional<at::Tensor>& bias,
                                          int64_t max_batch,
                                          c10::function_ref<void(const at::Tensor& x_rows, at::Tensor& y)> matvec) {
  check_masked_linear(x, w, p, rng_state, bias);
  at::Tensor x_rows = as_matrix(x);
  const int64_t batch = x_rows.size(0);
  const bool fused = (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble) && w.is_contiguous() &&
                     batch >= 1 && batch <= max_batch;
  if (!fused) return masked_linear_blocked(x, w, p, rng_state, bias);
  if (x_rows.stride(1) != 1) x_rows = x_rows.contiguous();
  at::Tensor y = at::empty({batch, w.size(0)}, x.options());
  if (w.size(0) > 0) matvec(x_rows, y);
  if (bias && bias->defined()) y.add_(*bias);
  return y.view(with_last(x.sizes(), w.size(0)));
}

namespace {

// Every device without a kernel of its own (the CPU and CUDA have one, for their small batches).
at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                         const std::optional<at::Tensor>& bias) {
  check_masked_linear(x, w, p, rng_state, bias);
  return masked_linear_blocked(x, w, p, rng_state, bias);
}

// grad_x = grad_y @ (mask ⊙ w), summed over the blocks of rows the forward masks: each block is
// one contiguous run of the mask, which the masking kernel makes fastest. The sum re-reads grad_x
// once per block; blocks of at least four times grad_x's rows keep that under a quarter of w's size.
at::Tensor masked_linear_backward_input(const at::Tensor& grad_output, const at::Tensor& w, double p,
                                        const at::Tensor& rng_state) {
  TORCH_CHECK_VALUE(w.dim() == 2 && grad_output.dim() >= 1 && grad_output.size(-1) == w.size(0),
                    "tinybig_cuda.masked_linear_backward_input: expected grad_output of shape (..., out_features) and w of "
                    "shape (out_features, in_features), but got shapes ", grad_output.sizes(), " and ", w.sizes());
  const int64_t out_features = w.size(0), in_features = w.size(1);
  const at::Tensor grad_rows = as_matrix(grad_output);
  const std::vector<int64_t> grad_x_sizes = with_last(grad_output.sizes(), in_features);
  if (grad_rows.size(0) == 0 || out_features == 0 || in_features == 0) {
    return at::zeros(grad_x_sizes, grad_output.options());
  }
  at::Tensor grad_x = empty_output({grad_rows.size(0), in_features}, grad_output.options());
  // float16 and bfloat16 partial sums are kept in float32, as BLAS keeps them within one product:
  // rounding them between blocks would lose what a single product keeps.
  const bool reduced_precision = at::isReducedFloatingType(grad_output.scalar_type());
  at::Tensor sum = reduced_precision ? at::empty(grad_x.sizes(), grad_x.options().dtype(at::kFloat)) : grad_x;
  const int64_t block = lines_per_block(in_features, w.element_size(), grad_rows.size(0));
  for (int64_t first = 0; first < out_features; first += block) {
    const int64_t count = std::min(block, out_features - first);
    at::Tensor masked = masked_rows(w, first, count, p, rng_state);
    at::Tensor grad_block = grad_rows.narrow(1, first, count);
    if (reduced_precision) {
      masked = masked.to(at::kFloat);
      grad_block = grad_block.to(at::kFloat);
    }
    if (first == 0) {
      at::mm_out(sum, grad_block, masked);
    } else {
      sum.addmm_(grad_block, masked);
    }
  }
  if (reduced_precision) grad_x.copy_(sum);
  return grad_x.view(grad_x_sizes);
}

// grad_w = mask ⊙ (grad_y^T @ x), a block of rows at a time: each block of the product is masked
// while it is still in cache, then written over itself.
at::Tensor masked_linear_backward_weight(const at::Tensor& grad_output, const at::Tensor& x, double p,
                                         const at::Tensor& rng_state) {
  TORCH_CHECK_VALUE(grad_output.dim() >= 1 && grad_output.dim() == x.dim() &&
                        grad_output.sizes().slice(0, x.dim() - 1) == x.sizes().slice(0, x.dim() - 1),
                    "tinybig_cuda.masked_linear_backward_weight: expected grad_output (..., out_features) and x "
                    "(..., in_features) with the same leading dimensions, but got shapes ", grad_output.sizes(),
                    " and ", x.sizes());
  const int64_t out_features = grad_output.size(-1), in_features = x.size(-1);
  const at::Tensor grad_rows = as_matrix(grad_output);
  const at::Tensor x_rows = as_matrix(x);
  if (x_rows.size(0) == 0) return at::zeros({out_features, in_features}, x.options());
  at::Tensor grad_w = empty_output({out_features, in_features}, x.options());
  const int64_t block = lines_per_block(in_features, x.element_size(), x_rows.size(0));
  for (int64_t first = 0; first < out_features; first += block) {
    const int64_t count = std::min(block, out_features - first);
    at::Tensor grad_w_block = grad_w.narrow(0, first, count);
    at::mm_out(grad_w_block, grad_rows.narrow(1, first, count).t(), x_rows);
    grad_w_block.copy_(call_mask_apply(grad_w_block, p, rng_state, first * in_features, std::nullopt));
  }
  return grad_w;
}

at::Tensor call_masked_linear(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                              const std::optional<at::Tensor>& bias) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, const at::Tensor&,
                                            const std::optional<at::Tensor>&)>("tinybig_cuda::masked_linear");
  return op.call(x, w, p, rng_state, bias);
}

// The backward ops, called through the dispatcher so that torch.compile traces them into the
// backward graph.
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, double, const at::Tensor&);

at::Tensor call_backward_input(const at::Tensor& grad_output, const at::Tensor& w, double p,
                               const at::Tensor& rng_state) {
  static const auto op = find_op<BackwardSignature>("tinybig_cuda::masked_linear_backward_input");
  return op.call(grad_output, w, p, rng_state);
}

at::Tensor call_backward_weight(const at::Tensor& grad_output, const at::Tensor& x, double p,
                                const at::Tensor& rng_state) {
  static const auto op = find_op<BackwardSignature>("tinybig_cuda::masked_linear_backward_weight");
  return op.call(grad_output, x, p, rng_state);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves x, w (the parameter itself, not a copy) and the 16-byte state: the backward makes the
// masked blocks again instead of keeping a masked weight.
class MaskedLinear : public TraceableFunction<MaskedLinear> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& w, double p,
                            const at::Tensor& rng_state, const std::optional<at::Tensor>& bias) {
    context->save_for_backward({x, w, rng_state});
    context->saved_data["p"] = p;
    context->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_masked_linear(x, w, p, rng_state, bias);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &rng_state = saved[2];
    const double p = context->saved_data["p"].toDouble();
    const at::Tensor& grad_y = grad_outputs[0];
    at::Tensor grad_x, grad_w, grad_bias;
    if (grad_y.defined() && at::GradMode::is_enabled()) {
      // backward(create_graph=True): a backward that is itself differentiable, from
      // bernoulli_mask_apply (whose backward is recorded) and stock ops; it makes the whole masked
      // weight, as mask-then-linear would.
      if (context->needs_input_grad(0)) {
        grad_x = at::matmul(grad_y, call_mask_apply(w, p, rng_state, 0, std::nullopt));
      }
      if (context->needs_input_grad(1)) {
        grad_w = call_mask_apply(at::mm(as_matrix(grad_y).t(), as_matrix(x)), p, rng_state, 0, std::nullopt);
      }
    } else if (grad_y.defined()) {
      if (context->needs_input_grad(0)) {
        grad_x = call_backward_input(grad_y, w, p, rng_state);
      }
      if (context->needs_input_grad(1)) {
        grad_w = call_backward_weight(grad_y, x, p, rng_state);
      }
    }
    // needs_input_grad counts the tensor arguments given: x, w, rng_state, then bias if any.
    if (grad_y.defined() && context->saved_data["has_bias"].toBool() && context->needs_input_grad(3)) {
      grad_bias = as_matrix(grad_y).sum(0);
    }
    return {grad_x, grad_w, at::Tensor(), at::Tensor(), grad_bias};
  }
};

}  // namespace

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                                  const std::optional<at::Tensor>& bias) {
  return MaskedLinear::apply(x, w, p, rng_state, bias);
}

TORCH_LIBRARY_IMPL(tinybig_cuda, CompositeExplicitAutograd, m) {
  m.impl("masked_linear", masked_linear);
  m.impl("masked_linear_backward_input", masked_linear_backward_input);
  m.impl("masked_linear_backward_weight", masked_linear_backward_weight);
}

}  // namespace tinybig_cuda
