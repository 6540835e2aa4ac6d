// The mask key of a CPU op call, shared by the CPU kernels of the masking and compact ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/philox_mask.h"

namespace tinybig_cuda {

// The mask key of a CPU rng_state ([seed, offset], int64) and keep probability p.
inline MaskKey cpu_mask_key(const at::Tensor& rng_state, double p) {
  const at::Tensor state = rng_state.contiguous();
  const int64_t* words = state.const_data_ptr<int64_t>();
  return MaskKey{static_cast<uint64_t>(words[0]), static_cast<uint64_t>(words[1]),
                 keep_threshold(p)};
}

}  // namespace tinybig_cuda
