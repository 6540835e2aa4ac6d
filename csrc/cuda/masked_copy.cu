#include <algorithm>

#include "masked_copy_body.h"
#include "masked_copy_cuda.h"

namespace tinybig_cuda {
namespace {

constexpr int kThreadsPerBlock = 256;
// Enough resident blocks per SM to hide memory latency; more only adds scheduling work, since
// the grid-stride loop covers any size.
constexpr int kBlocksPerMultiprocessor = 8;

template <typename Bits>
__global__ void __launch_bounds__(kThreadsPerBlock)
    masked_copy_kernel(MaskedCopyArgs<Bits> args, const int64_t* rng_state, uint64_t threshold) {
  const MaskKey key{static_cast<uint64_t>(rng_state[0]), static_cast<uint64_t>(rng_state[1]),
                    threshold};
  const uint64_t thread = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t thread_count = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  masked_copy_thread(args, key, thread, thread_count);
}

template <typename Bits>
cudaError_t launch(const void* input, void* output, int64_t numel, const MaskWindow& window,
                   const int64_t* rng_state, uint64_t threshold, int device, cudaStream_t stream) {
  const MaskedCopyArgs<Bits> args{static_cast<const Bits*>(input), static_cast<Bits*>(output),
                                  numel, window,
                                  groups_are_aligned<Bits>(input, output, window, numel)};
  int multiprocessors = 0;
  cudaError_t status =
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  const uint64_t blocks_needed = (slot_count(args) + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const uint64_t blocks = std::min<uint64_t>(
      blocks_needed, static_cast<uint64_t>(multiprocessors) * kBlocksPerMultiprocessor);
  masked_copy_kernel<Bits><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
      args, rng_state, threshold);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_masked_copy_cuda(const void* input, void* output, int element_size,
                                    int64_t numel, const MaskWindow& window,
                                    const int64_t* rng_state, uint64_t threshold, int device,
                                    cudaStream_t stream) {
  switch (element_size) {
    case 1: return launch<uint8_t>(input, output, numel, window, rng_state, threshold, device, stream);
    case 2: return launch<uint16_t>(input, output, numel, window, rng_state, threshold, device, stream);
    case 4: return launch<uint32_t>(input, output, numel, window, rng_state, threshold, device, stream);
    case 8: return launch<uint64_t>(input, output, numel, window, rng_state, threshold, device, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tinybig_cuda
