#include "ops/argument_checks.h"

#include <c10/util/irange.h>

#include <charconv>
#include <limits>
#include <string>
#include <vector>

namespace tinybig_cuda {

namespace {

// "float32, float64, float16 or bfloat16": kMaskableDtypes as messages name them.
std::string maskable_dtypes_text() {
  std::string names;
  for (size_t i = 0; i < kMaskableDtypes.size(); ++i) {
    if (i > 0) names += i + 1 == kMaskableDtypes.size() ? " or " : ", ";
    names += kMaskableDtypes[i].name;
  }
  return names;
}

// The shortest text that reads back as `value` (as Python's repr): 1.0000001 must not print as 1.
std::string shortest_repr(double value) {
  char text[32];
  const auto result = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, result.ptr);
}

}  // namespace

std::vector<std::string> maskable_dtype_names() {
  std::vector<std::string> names;
  for (const MaskableDtype& entry : kMaskableDtypes) names.emplace_back(entry.name);
  return names;
}

std::string limit_text(int64_t limit) {
  if (limit == std::numeric_limits<int64_t>::max()) return "2**63 - 1";
  if (limit == kMaxCompactElements) return "2**62 - 1";
  return std::to_string(limit);
}

void check_keep_probability(const char* op, double p) {
  // Written so that NaN fails too.
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, op, ": expected p, the keep probability, in [0, 1], but got ",
                    shortest_repr(p));
}

void check_rng_state(const char* op, const at::Tensor& rng_state, const c10::Device& device,
                     bool cpu_allowed) {
  TORCH_CHECK_TYPE(rng_state.scalar_type() == at::kLong, op,
                   ": expected rng_state to be an int64 tensor [seed, offset], but got dtype ",
                   rng_state.scalar_type());
  TORCH_CHECK_VALUE(rng_state.dim() == 1 && rng_state.size(0) == 2, op,
                    ": expected rng_state to have shape [2] ([seed, offset]), but got shape ",
                    rng_state.sizes());
  TORCH_CHECK_VALUE(rng_state.device() == device || (cpu_allowed && rng_state.is_cpu()), op,
                    ": expected rng_state on ", device, " (the device of the data it masks)",
                    cpu_allowed && !device.is_cpu() ? " or on the CPU" : "", ", but got it on ",
                    rng_state.device());
}

void check_non_negative(const char* op, const char* argument, int64_t value) {
  TORCH_CHECK_VALUE(value >= 0, op, ": expected ", argument, " >= 0, but got ", value);
}

void check_at_most(const char* op, const char* argument, int64_t value, int64_t limit, const char* why) {
  TORCH_CHECK_VALUE(value <= limit, op, ": expected ", argument, " <= ", limit_text(limit), " (", why,
                    "), but got ", value);
}

void check_element_offset(const char* op, int64_t element_offset, int64_t numel) {
  check_non_negative(op, "element_offset", element_offset);
  TORCH_CHECK_VALUE(element_offset <= std::numeric_limits<int64_t>::max() - numel, op,
                    ": expected element_offset + numel <= 2**63 - 1, but got element_offset ",
                    element_offset, " with ", numel, " elements");
}

int64_t check_row_length(const char* op, int64_t row_length, int64_t width, int64_t rows) {
  TORCH_CHECK_VALUE(row_length >= width, op, ": expected row_length >= ", width,
                    " (the width of a row, the last dimension: rows of a window cannot overlap), but got ",
                    row_length);
  if (rows == 0) return 0;  // an empty tensor spans no indices
  constexpr int64_t largest = std::numeric_limits<int64_t>::max();
  TORCH_CHECK_VALUE(rows - 1 <= (largest - width) / row_length, op,
                    ": expected a window within 2**63 - 1 elements, but got ", rows,
                    " rows of row_length ", row_length);
  return (rows - 1) * row_length + width;
}

void check_maskable_dtype(const char* op, const char* argument, const at::Tensor& tensor) {
  const at::ScalarType dtype = tensor.scalar_type();
  bool maskable = false;
  for (const MaskableDtype& entry : kMaskableDtypes) maskable = maskable || entry.type == dtype;
  TORCH_CHECK_TYPE(maskable, op, ": expected ", argument, " to be ", maskable_dtypes_text(),
                   ", but got dtype ", dtype);
}

int64_t check_shape(const char* op, at::IntArrayRef shape, int64_t max_elements) {
  bool empty = false;
  for (const auto d : c10::irange(shape.size())) {
    TORCH_CHECK_VALUE(shape[d] >= 0, op, ": expected a shape of non-negative sizes, but got ", shape);
    empty = empty || shape[d] == 0;
  }
  if (empty) return 0;  // whatever the other sizes
  int64_t numel = 1;
  for (const auto d : c10::irange(shape.size())) {
    TORCH_CHECK_VALUE(numel <= max_elements / shape[d], op, ": expected a shape of at most ",
                      limit_text(max_elements), " elements, but got ", shape);
    numel *= shape[d];
  }
  return numel;
}

}  // namespace tinybig_cuda
