#include "compact_op.h"

#include <c10/util/irange.h>

#include <charconv>
#include <limits>
#include <string>

namespace tinybig_cuda {
namespace {

// The same checks, in the same words, as the core ops' (ops.cpp).

std::string shortest_repr(double value) {
  char text[32];
  const auto result = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, result.ptr);
}

void check_keep_probability(const char* op, double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, op, ": expected p, the keep probability, in [0, 1], but got ",
                    shortest_repr(p));
}

void check_rng_state(const char* op, const at::Tensor& rng_state, const c10::Device& device) {
  TORCH_CHECK_TYPE(rng_state.scalar_type() == at::kLong, op,
                   ": expected rng_state to be an int64 tensor [seed, offset], but got dtype ",
                   rng_state.scalar_type());
  TORCH_CHECK_VALUE(rng_state.dim() == 1 && rng_state.size(0) == 2, op,
                    ": expected rng_state to have shape [2] ([seed, offset]), but got shape ",
                    rng_state.sizes());
  TORCH_CHECK_VALUE(rng_state.device() == device, op, ": expected rng_state on ", device,
                    " (the device of the data it masks), but got it on ", rng_state.device());
}

void check_element_offset(const char* op, int64_t element_offset, int64_t numel) {
  TORCH_CHECK_VALUE(element_offset >= 0, op, ": expected element_offset >= 0, but got ",
                    element_offset);
  TORCH_CHECK_VALUE(element_offset <= std::numeric_limits<int64_t>::max() - numel, op,
                    ": expected element_offset + numel <= 2**63 - 1, but got element_offset ",
                    element_offset, " with ", numel, " elements");
}

void check_maskable_dtype(const char* op, const char* argument, const at::Tensor& tensor) {
  const at::ScalarType dtype = tensor.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   op, ": expected ", argument, " to be float32, float64, float16 or bfloat16, but got dtype ",
                   dtype);
}

}  // namespace

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
