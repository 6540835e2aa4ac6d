// masked_linear's CUDA kernel: at a batch of up to kCudaMaskedMatvecMaxBatch rows of x, in float32
// or float64, one launch that reads each row of w once and draws its mask as the row arrives
// (core/cuda/masked_matvec_body.h), as the CPU kernel does on AVX2 and AVX-512; every other call
// takes the blocked product of ops/masked_linear.cpp (masked blocks multiplied by cuBLAS).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "core/cuda/masked_matvec_body.h"
#include "core/cuda/masked_matvec_launch.h"
#include "core/philox_mask.h"
#include "ops/masked_linear.h"

namespace tinybig_cuda {
namespace {

at::Tensor masked_linear_cuda(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                              const std::optional<at::Tensor>& bias) {
  return masked_linear_fused_or_blocked(
      x, w, p, rng_state, bias, kCudaMaskedMatvecMaxBatch, [&](const at::Tensor& x_rows, at::Tensor& y) {
        const c10::cuda::CUDAGuard guard(w.device());
        C10_CUDA_CHECK(launch_masked_matvec_cuda(
            w.const_data_ptr(), x_rows.const_data_ptr(), y.mutable_data_ptr(), static_cast<int>(w.element_size()),
            x_rows.size(0), w.size(0), w.size(1), x_rows.stride(0), y.stride(0), rng_state.const_data_ptr<int64_t>(),
            keep_threshold(p), w.device().index(), c10::cuda::getCurrentCUDAStream()));
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) { m.impl("masked_linear", masked_linear_cuda); }

}  // namespace tinybig_cuda
