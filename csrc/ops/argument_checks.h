// The argument checks every tinybig_cuda op shares. Each throws an error whose message names the
// op and the argument, says what was expected and what came (ValueError or TypeError in Python).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace tinybig_cuda {

// The argument rules' constants, stated here once: tinybig_cuda/_arguments.py reads them from _C
// (MAX_COMPACT_ELEMENTS, maskable_dtype_names()) for the fake kernels, the module and the tests.
//
// The most elements a compact op's matrix may have: 2**62 - 1, as many as a float16 tensor can
// hold (a tensor holds at most 2**63 - 1 bytes).
constexpr int64_t kMaxCompactElements = std::numeric_limits<int64_t>::max() / 2;

// The dtypes the ops mask, expand and compress (docs/contract.md, 'Dtypes'), with their names in
// Python (torch.float32, ...), in the order messages list them.
struct MaskableDtype {
  at::ScalarType type;
  const char* name;
};
constexpr std::array<MaskableDtype, 4> kMaskableDtypes{{{at::kFloat, "float32"},
                                                        {at::kDouble, "float64"},
                                                        {at::kHalf, "float16"},
                                                        {at::kBFloat16, "bfloat16"}}};
// Their names, for _C.maskable_dtype_names().
std::vector<std::string> maskable_dtype_names();

// "2**63 - 1" and "2**62 - 1" for the two limits, the number for any other.
std::string limit_text(int64_t limit);

void check_keep_probability(const char* op, double p);
// value >= 0, an integer argument's sign.
void check_non_negative(const char* op, const char* argument, int64_t value);
// value <= limit; `why` says where the limit comes from.
void check_at_most(const char* op, const char* argument, int64_t value, int64_t limit, const char* why);
// rng_state must be an int64 [seed, offset] on `device`, the data's; or on the CPU as well where
// `cpu_allowed` (the compact ops: the host then knows the mask's count without waiting for the
// device).
void check_rng_state(const char* op, const at::Tensor& rng_state, const c10::Device& device,
                     bool cpu_allowed = false);
void check_element_offset(const char* op, int64_t element_offset, int64_t numel);
// row_length of a window of `rows` rows of `width` elements: at least width, so rows do not
// overlap (checked for an empty window too). Returns the global indices the window spans,
// (rows - 1) * row_length + width, or 0 for no rows.
int64_t check_row_length(const char* op, int64_t row_length, int64_t width, int64_t rows);
void check_maskable_dtype(const char* op, const char* argument, const at::Tensor& tensor);
// Returns the number of elements of `shape`: sizes >= 0, at most max_elements in all.
int64_t check_shape(const char* op, at::IntArrayRef shape,
                    int64_t max_elements = std::numeric_limits<int64_t>::max());

}  // namespace tinybig_cuda
