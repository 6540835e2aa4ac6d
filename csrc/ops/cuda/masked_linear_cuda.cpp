// masked_linear's CUDA kernel: at a batch of up to kCudaMaskedMatvecMaxBatch rows of x, in float32
// or float64, one launch that reads each row of w once and draws its mask as the row arrives
// (core/cuda/masked_matvec_body.h), as the CPU kernel does on AVX2 and AVX-512; every other call
// takes the blocked product of ops/masked_linear.cpp (masked blocks multiplied by cuBLAS).
#include <ATen/ops/empty.h>
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
  check_masked_linear(x, w, p, rng_state, bias);
  at::Tensor x_rows = as_matrix(x);
  const int64_t batch = x_rows.size(0);
  const bool fused = (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble) && w.is_contiguous() &&
                     batch >= 1 && batch <= kCudaMaskedMatvecMaxBatch;
  if (!fused) return masked_linear_blocked(x, w, p, rng_state, bias);

  const c10::cuda::CUDAGuard guard(w.device());
  if (x_rows.stride(1) != 1) x_rows = x_rows.contiguous();
  const int64_t out_features = w.size(0);
  at::Tensor y = at::empty({batch, out_features}, x.options());
  if (out_features > 0) {
    C10_CUDA_CHECK(launch_masked_matvec_cuda(
        w.const_data_ptr(), x_rows.const_data_ptr(), y.mutable_data_ptr(), static_cast<int>(w.element_size()),
        batch, out_features, w.size(1), x_rows.stride(0), out_features, rng_state.const_data_ptr<int64_t>(),
        keep_threshold(p), w.device().index(), c10::cuda::getCurrentCUDAStream()));
  }
  if (bias && bias->defined()) y.add_(*bias);
  return y.view(with_last(x.sizes(), out_features));
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) { m.impl("masked_linear", masked_linear_cuda); }

}  // namespace tinybig_cuda
