// Host-side pieces shared by the CPU and CUDA registrations of the compact ops
// (bernoulli_mask_count, bernoulli_mask_expand, bernoulli_mask_compress): their argument checks
// and their checks of the kept count, with messages that name the argument. The cheap checks come
// first: everything here but the count's comparison runs before any mask is generated.
#pragma once

#include <ATen/core/Tensor.h>

namespace tinybig_cuda {

constexpr const char* kCountOp = "tinybig_cuda.bernoulli_mask_count";
constexpr const char* kExpandOp = "tinybig_cuda.bernoulli_mask_expand";
constexpr const char* kCompressOp = "tinybig_cuda.bernoulli_mask_compress";

void check_count_arguments(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset);

// Returns the number of elements of `shape`.
int64_t check_expand_arguments(const at::Tensor& values, double p, const at::Tensor& rng_state,
                               at::IntArrayRef shape, int64_t element_offset);

void check_compress_arguments(const at::Tensor& full, double p, const at::Tensor& rng_state,
                              int64_t kept_count, int64_t element_offset);

// What is known of the mask's kept count: exact, or (when counting stopped as soon as it proved
// a claimed count wrong) bounds.
struct KeptCount {
  int64_t at_least;
  int64_t at_most;
  static KeptCount exactly(int64_t kept) { return {kept, kept}; }
  bool allows(int64_t count) const { return at_least == at_most && count == at_least; }
};

// Expand: values must hold exactly the entries the mask keeps of `shape`.
void check_values_match_mask(const at::Tensor& values, const KeptCount& kept, at::IntArrayRef shape);

// Compress: kept_count must be exactly the entries the mask keeps of full.
void check_kept_count_matches_mask(int64_t kept_count, const KeptCount& kept, const at::Tensor& full);

}  // namespace tinybig_cuda
