// The CUDA launcher, declared without torch so the .cu file compiles against cudart alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/mask_window.h"

namespace tinybig_cuda {

// Launches the masked copy of `numel` elements of `element_size` bytes on `stream`, local element k
// masked by global element global_index(window, k). The kernel
// reads [seed, offset] from device memory at rng_state, so a captured CUDA graph sees whatever
// state is written there before each replay. Returns the launch's error status.
cudaError_t launch_masked_copy_cuda(const void* input, void* output, int element_size,
                                    int64_t numel, const MaskWindow& window,
                                    const int64_t* rng_state, uint64_t threshold, int device,
                                    cudaStream_t stream);

}  // namespace tinybig_cuda
