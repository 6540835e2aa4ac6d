#include "ops/masking.h"

#include <ATen/ops/ones.h>

#include <optional>

#include "ops/argument_checks.h"
#include "ops/op_handles.h"
#include "ops/output_memory.h"

namespace tinybig_cuda {
namespace {

// The rows of a tensor of `shape`, as the window rule sees them: its last dimension (a 0-d
// tensor is one row of one element).
int64_t row_width(at::IntArrayRef shape) { return shape.empty() ? 1 : shape.back(); }

// Checks element_offset and row_length against a tensor of `shape` and returns its window.
MaskWindow checked_window(const char* op, at::IntArrayRef shape, int64_t numel,
                          int64_t element_offset, std::optional<int64_t> row_length) {
  const int64_t width = row_width(shape);
  int64_t extent = numel;  // global indices spanned: from the first element past the last
  if (row_length) {  // checked for an empty tensor too: its row_length is as much an argument
    extent = check_row_length(op, *row_length, width, numel > 0 ? numel / width : 0);
  }
  check_element_offset(op, element_offset, extent);
  return make_mask_window(static_cast<uint64_t>(element_offset), numel, width,
                          static_cast<uint64_t>(row_length.value_or(width)));
}

at::Tensor bernoulli_mask_apply_with(const MaskingKernels& kernels, const at::Tensor& w, double p,
                                     const at::Tensor& rng_state, int64_t element_offset,
                                     std::optional<int64_t> row_length) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask_apply";
  check_maskable_dtype(op, "w", w);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, w.device());
  const MaskWindow window = checked_window(op, w.sizes(), w.numel(), element_offset, row_length);

  // The output is always contiguous, so element i of the flat output is logical element i.
  at::Tensor output = empty_output(w.sizes(), w.options());
  if (w.numel() > 0) kernels.masked_copy(w, output, p, rng_state.contiguous(), window);
  return output;
}

at::Tensor bernoulli_mask_with(const MaskingKernels& kernels, at::IntArrayRef shape, double p,
                               const at::Tensor& rng_state, int64_t element_offset,
                               std::optional<int64_t> row_length) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask";
  const int64_t numel = check_shape(op, shape);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, rng_state.device());
  const MaskWindow window = checked_window(op, shape, numel, element_offset, row_length);
  const at::TensorOptions options = rng_state.options().dtype(at::kBool);
  // The mask is the masked copy of an all-true tensor (one `true` expanded, so nothing of the
  // mask's size is allocated for it): one kernel serves both ops.
  at::Tensor mask = empty_output(shape, options);
  if (mask.numel() > 0) {
    kernels.masked_copy(at::ones({}, options).expand(shape), mask, p, rng_state.contiguous(), window);
  }
  return mask;
}

// Reads p from its tensor and calls the float op: below autograd (ops/autograd.cpp records this
// op's own backward), on every device, through that device's kernel.
at::Tensor bernoulli_mask_apply_p_tensor(const at::Tensor& w, const at::Tensor& p, const at::Tensor& rng_state,
                                         c10::SymInt element_offset, std::optional<c10::SymInt> row_length) {
  TORCH_CHECK_VALUE(p.numel() == 1 && at::isFloatingType(p.scalar_type()) && p.device().is_cpu(),
                    "tinybig_cuda.bernoulli_mask_apply: expected p as one float on the CPU, but got ", p.numel(),
                    " of dtype ", p.scalar_type(), " on ", p.device());
  return call_mask_apply(w, p.item<double>(), rng_state, element_offset, row_length);
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CompositeExplicitAutograd, m) {
  m.impl("bernoulli_mask_apply_p_tensor", bernoulli_mask_apply_p_tensor);
}

void register_masking_ops(torch::Library& library, MaskingKernels kernels) {
  library.impl("bernoulli_mask_apply", [kernels](const at::Tensor& w, double p,
                                                 const at::Tensor& rng_state, int64_t element_offset,
                                                 std::optional<int64_t> row_length) {
    return bernoulli_mask_apply_with(kernels, w, p, rng_state, element_offset, row_length);
  });
  library.impl("bernoulli_mask", [kernels](at::IntArrayRef shape, double p, const at::Tensor& rng_state,
                                           int64_t element_offset, std::optional<int64_t> row_length) {
    return bernoulli_mask_with(kernels, shape, p, rng_state, element_offset, row_length);
  });
}

}  // namespace tinybig_cuda
