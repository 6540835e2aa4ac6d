#include "compact_op.h"

#include "argument_checks.h"

#include <c10/util/irange.h>

#include <limits>

namespace tinybig_cuda {

void check_count_arguments(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset) {
  TORCH_CHECK_VALUE(numel >= 0, kCountOp, ": expected numel >= 0, but got ", numel);
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
  int64_t numel = 1;
  for (const auto d : c10::irange(shape.size())) {
    TORCH_CHECK_VALUE(shape[d] >= 0, kExpandOp, ": expected a shape of non-negative sizes, but got ", shape);
    TORCH_CHECK_VALUE(shape[d] == 0 || numel <= std::numeric_limits<int64_t>::max() / shape[d], kExpandOp,
                      ": expected a shape of fewer than 2**63 elements, but got ", shape);
    numel *= shape[d];
  }
  check_keep_probability(kExpandOp, p);
  check_rng_state(kExpandOp, rng_state, values.device());
  check_element_offset(kExpandOp, element_offset, numel);
  return numel;
}

void check_compress_arguments(const at::Tensor& full, double p, const at::Tensor& rng_state,
                              int64_t kept_count, int64_t element_offset) {
  check_maskable_dtype(kCompressOp, "full", full);
  TORCH_CHECK_VALUE(kept_count >= 0, kCompressOp, ": expected kept_count >= 0, but got ", kept_count);
  check_keep_probability(kCompressOp, p);
  check_rng_state(kCompressOp, rng_state, full.device());
  check_element_offset(kCompressOp, element_offset, full.numel());
}

void check_values_match_mask(const at::Tensor& values, int64_t kept, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(values.numel() == kept, kExpandOp, ": expected values to have ", kept,
                    " elements, the number of entries the mask keeps of shape ", shape,
                    ", but got ", values.numel());
}

void check_kept_count_matches_mask(int64_t kept_count, int64_t kept, const at::Tensor& full) {
  TORCH_CHECK_VALUE(kept_count == kept, kCompressOp, ": expected kept_count to be ", kept,
                    ", the number of entries the mask keeps of full (shape ", full.sizes(),
                    "), but got ", kept_count);
}

}  // namespace tinybig_cuda
