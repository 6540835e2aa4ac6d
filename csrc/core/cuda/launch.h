// The one launch configuration of the CUDA kernels: every kernel is a grid-stride loop, so a grid
// only needs to fill the GPU, whatever the size. For the .cu files (compiled by nvcc, without torch).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace tinybig_cuda {

constexpr int kThreadsPerBlock = 256;
// Enough resident blocks per SM to hide memory latency; more only adds scheduling work.
constexpr int kBlocksPerMultiprocessor = 8;

// Sets *blocks to the blocks of kThreadsPerBlock threads for `items` work items on `device`: one
// per kThreadsPerBlock items, at least one, at most what fills the GPU.
inline cudaError_t grid_stride_blocks(uint64_t items, int device, unsigned* blocks) {
  int multiprocessors = 0;
  const cudaError_t status = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  const uint64_t needed = std::max<uint64_t>((items + kThreadsPerBlock - 1) / kThreadsPerBlock, 1);
  *blocks = static_cast<unsigned>(
      std::min<uint64_t>(needed, static_cast<uint64_t>(multiprocessors) * kBlocksPerMultiprocessor));
  return cudaSuccess;
}

// This thread's index in the grid, and the grid's thread count: a grid-stride loop's start and step.
__device__ inline uint64_t global_thread() {
  return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline uint64_t global_thread_count() {
  return static_cast<uint64_t>(gridDim.x) * blockDim.x;
}

}  // namespace tinybig_cuda
