#include "ops/masking.h"

#include <ATen/ops/ones.h>

#include "ops/argument_checks.h"
#include "ops/output_memory.h"

namespace tinybig_cuda {
namespace {

at::Tensor bernoulli_mask_apply_with(const MaskingKernels& kernels, const at::Tensor& w, double p,
                                     const at::Tensor& rng_state, int64_t element_offset) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask_apply";
  check_maskable_dtype(op, "w", w);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, w.device());
  check_element_offset(op, element_offset, w.numel());

  // The output is always contiguous, so element i of the flat output is logical element i.
  at::Tensor output = empty_output(w.sizes(), w.options());
  if (w.numel() > 0) {
    kernels.masked_copy(w, output, p, rng_state.contiguous(), static_cast<uint64_t>(element_offset));
  }
  return output;
}

at::Tensor bernoulli_mask_with(const MaskingKernels& kernels, at::IntArrayRef shape, double p,
                               const at::Tensor& rng_state, int64_t element_offset) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask";
  const int64_t numel = check_shape(op, shape);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, rng_state.device());
  check_element_offset(op, element_offset, numel);
  const at::TensorOptions options = rng_state.options().dtype(at::kBool);
  // The mask is the masked copy of an all-true tensor (one `true` expanded, so nothing of the
  // mask's size is allocated for it): one kernel serves both ops.
  at::Tensor mask = empty_output(shape, options);
  if (mask.numel() > 0) {
    kernels.masked_copy(at::ones({}, options).expand(shape), mask, p, rng_state.contiguous(),
                        static_cast<uint64_t>(element_offset));
  }
  return mask;
}

}  // namespace

void register_masking_ops(torch::Library& library, MaskingKernels kernels) {
  library.impl("bernoulli_mask_apply", [kernels](const at::Tensor& w, double p,
                                                 const at::Tensor& rng_state, int64_t element_offset) {
    return bernoulli_mask_apply_with(kernels, w, p, rng_state, element_offset);
  });
  library.impl("bernoulli_mask", [kernels](at::IntArrayRef shape, double p,
                                           const at::Tensor& rng_state, int64_t element_offset) {
    return bernoulli_mask_with(kernels, shape, p, rng_state, element_offset);
  });
}

}  // namespace tinybig_cuda
