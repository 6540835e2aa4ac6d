// The argument checks every tinybig_cuda op shares. Each throws an error whose message names the
// op and the argument, says what was expected and what came (ValueError or TypeError in Python).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <string>

namespace tinybig_cuda {

// The most elements a compact op's matrix may have: 2**62 - 1, as many as a float16 tensor can
// hold (a tensor holds at most 2**63 - 1 bytes). tinybig_cuda/_arguments.py states it for the fake
// kernels; tests/test_errors.py checks that both agree (the compiled module exports it).
constexpr int64_t kMaxCompactElements = std::numeric_limits<int64_t>::max() / 2;

// "2**63 - 1" and "2**62 - 1" for the two limits, the number for any other.
std::string limit_text(int64_t limit);

void check_keep_probability(const char* op, double p);
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
