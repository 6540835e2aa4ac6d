#include "core/cuda/launch.h"
#include "core/cuda/masked_copy_body.h"
#include "core/cuda/masked_copy_launch.h"
#include "core/element_size.h"

namespace tinybig_cuda {
namespace {

template <typename Bits>
__global__ void __launch_bounds__(kThreadsPerBlock)
    masked_copy_kernel(MaskedCopyArgs<Bits> args, const int64_t* rng_state, uint64_t threshold) {
  const MaskKey key{static_cast<uint64_t>(rng_state[0]), static_cast<uint64_t>(rng_state[1]),
                    threshold};
  masked_copy_thread(args, key, global_thread(), global_thread_count());
}

template <typename Bits>
cudaError_t launch(const void* input, void* output, int64_t numel, const MaskWindow& window,
                   const int64_t* rng_state, uint64_t threshold, int device, cudaStream_t stream) {
  const MaskedCopyArgs<Bits> args{static_cast<const Bits*>(input), static_cast<Bits*>(output),
                                  numel, window,
                                  groups_are_aligned<Bits>(input, output, window, numel)};
  unsigned blocks = 0;
  const cudaError_t status = grid_stride_blocks(slot_count(args), device, &blocks);
  if (status != cudaSuccess) return status;
  masked_copy_kernel<Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(args, rng_state, threshold);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_masked_copy_cuda(const void* input, void* output, int element_size,
                                    int64_t numel, const MaskWindow& window,
                                    const int64_t* rng_state, uint64_t threshold, int device,
                                    cudaStream_t stream) {
  return visit_element_bits(element_size, [&](auto bits) {
    return launch<decltype(bits)>(input, output, numel, window, rng_state, threshold, device, stream);
  });
}

}  // namespace tinybig_cuda
