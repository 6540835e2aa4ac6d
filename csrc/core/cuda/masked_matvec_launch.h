// The CUDA launcher of the masked matrix-vector product, declared without torch so the .cu file
// compiles against cudart alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tinybig_cuda {

// y[b, r] = sum over c of keep(r * in_features + c) * w[r, c] * x[b, c] for the `batch` (1 to
// kCudaMaskedMatvecMaxBatch) rows of x, on `stream`: w row-major (out_features, in_features), rows
// of x x_stride elements apart, of y y_stride apart; element_size 4 (float) or 8 (double). The
// kernel reads [seed, offset] from device memory at rng_state, so a captured CUDA graph sees the
// state written there before each replay. Returns the launch's error status.
cudaError_t launch_masked_matvec_cuda(const void* w, const void* x, void* y, int element_size, int64_t batch,
                                      int64_t out_features, int64_t in_features, int64_t x_stride, int64_t y_stride,
                                      const int64_t* rng_state, uint64_t threshold, int device, cudaStream_t stream);

}  // namespace tinybig_cuda
