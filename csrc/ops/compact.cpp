#include "ops/compact.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "ops/argument_checks.h"
#include "ops/output_memory.h"

#include <sstream>
#include <string>

namespace tinybig_cuda {
namespace {

constexpr const char* kCountOp = "tinybig_cuda.bernoulli_mask_count";
constexpr const char* kExpandOp = "tinybig_cuda.bernoulli_mask_expand";
constexpr const char* kCompressOp = "tinybig_cuda.bernoulli_mask_compress";

void check_count_arguments(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset) {
  check_non_negative(kCountOp, "numel", numel);
  check_at_most(kCountOp, "numel", numel, kMaxCompactElements, "the most elements a float16 matrix can have");
  check_keep_probability(kCountOp, p);
  check_rng_state(kCountOp, rng_state, rng_state.device());
  check_element_offset(kCountOp, element_offset, numel);
}

int64_t check_expand_arguments(const at::Tensor& values, double p, const at::Tensor& rng_state,
                               at::IntArrayRef shape, int64_t element_offset) {
  check_maskable_dtype(kExpandOp, "values", values);
  TORCH_CHECK_VALUE(values.dim() == 1, kExpandOp,
                    ": expected values to be 1-D (the kept entries in row-major order), but got shape ",
                    values.sizes());
  const int64_t numel = check_shape(kExpandOp, shape, kMaxCompactElements);
  TORCH_CHECK_VALUE(values.numel() <= numel, kExpandOp, ": expected values to have at most ", numel,
                    " elements (a mask keeps at most every entry of shape ", shape, "), but got ",
                    values.numel());
  check_keep_probability(kExpandOp, p);
  check_rng_state(kExpandOp, rng_state, values.device(), /*cpu_allowed=*/true);
  check_element_offset(kExpandOp, element_offset, numel);
  return numel;
}

void check_compress_arguments(const at::Tensor& full, double p, const at::Tensor& rng_state,
                              int64_t kept_count, int64_t element_offset) {
  check_maskable_dtype(kCompressOp, "full", full);
  check_non_negative(kCompressOp, "kept_count", kept_count);
  check_at_most(kCompressOp, "kept_count", kept_count, full.numel(), "a mask keeps at most every entry of full");
  check_keep_probability(kCompressOp, p);
  check_rng_state(kCompressOp, rng_state, full.device(), /*cpu_allowed=*/true);
  check_element_offset(kCompressOp, element_offset, full.numel());
}

// Why `claimed` is not the mask's count: "K elements, the number of entries the mask keeps of
// <what>, but got <claimed>", or, where counting stopped early, the bound that rules it out.
std::string mismatch(const char* noun, const KeptCount& kept, const std::string& what, int64_t claimed) {
  std::ostringstream text;
  if (kept.at_least == kept.at_most) {
    text << kept.at_least << noun << ", the number of entries the mask keeps of " << what
         << ", but got " << claimed;
  } else {
    text << "the number of entries the mask keeps of " << what << ", but got " << claimed
         << ": the mask keeps at " << (kept.at_least > claimed ? "least " : "most ")
         << (kept.at_least > claimed ? kept.at_least : kept.at_most)
         << " (counting stopped once that was certain)";
  }
  return text.str();
}

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream text;
  text << "shape " << shape;
  return text.str();
}

}  // namespace

void check_values_match_mask(const at::Tensor& values, const KeptCount& kept, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(kept.allows(values.numel()), kExpandOp, ": expected values to have ",
                    mismatch(" elements", kept, shape_text(shape), values.numel()));
}

void check_kept_count_matches_mask(int64_t kept_count, const KeptCount& kept, const at::Tensor& full) {
  TORCH_CHECK_VALUE(kept.allows(kept_count), kCompressOp, ": expected kept_count to be ",
                    mismatch("", kept, "full (" + shape_text(full.sizes()) + ")", kept_count));
}

namespace {

at::Tensor count_with(const CompactKernels& kernels, int64_t numel, double p,
                      const at::Tensor& rng_state, int64_t element_offset) {
  check_count_arguments(numel, p, rng_state, element_offset);
  if (numel == 0) return at::zeros({}, rng_state.options());
  at::Tensor count = at::empty({}, rng_state.options());
  kernels.count(numel, p, rng_state.contiguous(), static_cast<uint64_t>(element_offset), count);
  return count;
}

at::Tensor expand_with(const CompactKernels& kernels, const at::Tensor& values, double p,
                       const at::Tensor& rng_state, at::IntArrayRef shape, int64_t element_offset) {
  const int64_t numel = check_expand_arguments(values, p, rng_state, shape, element_offset);
  // Allocated before counting: a size no memory can hold fails here, at once.
  at::Tensor full = empty_output(shape, values.options());
  if (numel == 0) {
    check_values_match_mask(values, KeptCount::exactly(0), shape);
  } else {
    kernels.expand(values, full, p, rng_state.contiguous(), static_cast<uint64_t>(element_offset));
  }
  return full;
}

at::Tensor compress_with(const CompactKernels& kernels, const at::Tensor& full, double p,
                         const at::Tensor& rng_state, int64_t kept_count, int64_t element_offset) {
  check_compress_arguments(full, p, rng_state, kept_count, element_offset);
  at::Tensor values = empty_output({kept_count}, full.options());
  if (full.numel() == 0) {
    check_kept_count_matches_mask(kept_count, KeptCount::exactly(0), full);
  } else {
    kernels.compress(full, values, p, rng_state.contiguous(), static_cast<uint64_t>(element_offset));
  }
  return values;
}

}  // namespace

void register_compact_ops(torch::Library& library, CompactKernels kernels) {
  library.impl("bernoulli_mask_count", [kernels](int64_t numel, double p, const at::Tensor& rng_state,
                                                 int64_t element_offset) {
    return count_with(kernels, numel, p, rng_state, element_offset);
  });
  library.impl("bernoulli_mask_expand", [kernels](const at::Tensor& values, double p,
                                                  const at::Tensor& rng_state, at::IntArrayRef shape,
                                                  int64_t element_offset) {
    return expand_with(kernels, values, p, rng_state, shape, element_offset);
  });
  library.impl("bernoulli_mask_compress", [kernels](const at::Tensor& full, double p,
                                                    const at::Tensor& rng_state, int64_t kept_count,
                                                    int64_t element_offset) {
    return compress_with(kernels, full, p, rng_state, kept_count, element_offset);
  });
}

}  // namespace tinybig_cuda
