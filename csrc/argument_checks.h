// The argument checks every tinybig_cuda op shares. Each throws an error whose message names the
// op and the argument, says what was expected and what came (ValueError or TypeError in Python).
#pragma once

#include <ATen/core/Tensor.h>

namespace tinybig_cuda {

void check_keep_probability(const char* op, double p);
void check_rng_state(const char* op, const at::Tensor& rng_state, const c10::Device& device);
void check_element_offset(const char* op, int64_t element_offset, int64_t numel);
void check_maskable_dtype(const char* op, const char* argument, const at::Tensor& tensor);

}  // namespace tinybig_cuda
