// The compact ops (bernoulli_mask_count, bernoulli_mask_expand, bernoulli_mask_compress): their
// device-independent half, and the kernel table each device registers.
//
// The half checks the arguments (the cheap checks first: nothing but the kept count's comparison
// needs a mask generated), allocates the output and answers empty tensors itself; a device's
// kernels count, check the count they find, and fill the output.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace tinybig_cuda {

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

struct CompactKernels {
  // Writes the number of the numel > 0 elements the mask keeps to `count`, a 0-dim int64 tensor on
  // rng_state's device.
  void (*count)(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
                at::Tensor& count);
  // Refuses values (check_values_match_mask) unless it holds exactly the entries the mask keeps of
  // full; then writes full (contiguous, non-empty): values in row-major order at the kept
  // positions, zero bits elsewhere.
  void (*expand)(const at::Tensor& values, at::Tensor& full, double p, const at::Tensor& rng_state,
                 uint64_t element_offset);
  // Refuses values.numel(), the caller's kept_count (check_kept_count_matches_mask), unless it is
  // the number of entries the mask keeps of full (non-empty); then writes values (contiguous):
  // full's kept entries in row-major order.
  void (*compress)(const at::Tensor& full, at::Tensor& values, double p, const at::Tensor& rng_state,
                   uint64_t element_offset);
};

void register_compact_ops(torch::Library& library, CompactKernels kernels);

}  // namespace tinybig_cuda
