#include "core/cuda/launch.h"
#include "core/cuda/masked_matvec_body.h"
#include "core/cuda/masked_matvec_launch.h"

namespace tinybig_cuda {
namespace {

constexpr unsigned kWarp = 32;

// One warp per row of w, a grid-stride loop over the rows: each lane adds its blocks of the row
// (masked_matvec_lane), the warp adds its lanes' sums, and lane 0 writes them.
template <typename Scalar, int kBatch>
__global__ void __launch_bounds__(kThreadsPerBlock)
    masked_matvec_kernel(MaskedMatvecArgs<Scalar> args, const int64_t* rng_state, uint64_t threshold) {
  const MaskKey key{static_cast<uint64_t>(rng_state[0]), static_cast<uint64_t>(rng_state[1]), threshold};
  const unsigned lane = threadIdx.x % kWarp;
  const uint64_t warps = global_thread_count() / kWarp;
  for (uint64_t row = global_thread() / kWarp; row < static_cast<uint64_t>(args.out_features); row += warps) {
    Scalar sums[kBatch] = {};
    masked_matvec_lane<Scalar, kBatch>(args, key, static_cast<int64_t>(row), lane, kWarp, sums);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
#pragma unroll
      for (unsigned distance = kWarp / 2; distance > 0; distance /= 2) {
        sums[b] += __shfl_down_sync(0xffffffffu, sums[b], distance);
      }
      if (lane == 0) args.y[b * args.y_stride + static_cast<int64_t>(row)] = sums[b];
    }
  }
}

template <typename Scalar, int kBatch>
cudaError_t launch(const MaskedMatvecArgs<Scalar>& args, const int64_t* rng_state, uint64_t threshold, int device,
                   cudaStream_t stream) {
  unsigned blocks = 0;
  const cudaError_t status = grid_stride_blocks(static_cast<uint64_t>(args.out_features) * kWarp, device, &blocks);
  if (status != cudaSuccess) return status;
  masked_matvec_kernel<Scalar, kBatch><<<blocks, kThreadsPerBlock, 0, stream>>>(args, rng_state, threshold);
  return cudaGetLastError();
}

template <typename Scalar>
cudaError_t launch_for_batch(const MaskedMatvecArgs<Scalar>& args, int64_t batch, const int64_t* rng_state,
                             uint64_t threshold, int device, cudaStream_t stream) {
  switch (batch) {
    case 1: return launch<Scalar, 1>(args, rng_state, threshold, device, stream);
    case 2: return launch<Scalar, 2>(args, rng_state, threshold, device, stream);
    case 3: return launch<Scalar, 3>(args, rng_state, threshold, device, stream);
    case 4: return launch<Scalar, 4>(args, rng_state, threshold, device, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_masked_matvec_cuda(const void* w, const void* x, void* y, int element_size, int64_t batch,
                                      int64_t out_features, int64_t in_features, int64_t x_stride, int64_t y_stride,
                                      const int64_t* rng_state, uint64_t threshold, int device, cudaStream_t stream) {
  static_assert(kCudaMaskedMatvecMaxBatch == 4, "launch_for_batch has a case per batch");
  if (element_size == 4) {
    const MaskedMatvecArgs<float> args{static_cast<const float*>(w), static_cast<const float*>(x),
                                       static_cast<float*>(y), out_features, in_features, x_stride, y_stride};
    return launch_for_batch(args, batch, rng_state, threshold, device, stream);
  }
  if (element_size == 8) {
    const MaskedMatvecArgs<double> args{static_cast<const double*>(w), static_cast<const double*>(x),
                                        static_cast<double*>(y), out_features, in_features, x_stride, y_stride};
    return launch_for_batch(args, batch, rng_state, threshold, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tinybig_cuda
