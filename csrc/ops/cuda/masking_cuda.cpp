// The CUDA kernel of the masking ops: device guard, stream, launch, error check.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "core/cuda/masked_copy_launch.h"
#include "ops/masking.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {
namespace {

void masked_copy_cuda(const at::Tensor& strided_input, at::Tensor& output, double p,
                      const at::Tensor& rng_state, const MaskWindow& window) {
  const c10::cuda::CUDAGuard guard(strided_input.device());
  const at::Tensor input = strided_input.contiguous();
  C10_CUDA_CHECK(launch_masked_copy_cuda(
      input.const_data_ptr(), output.mutable_data_ptr(), static_cast<int>(input.element_size()),
      input.numel(), window, rng_state.const_data_ptr<int64_t>(), keep_threshold(p),
      input.device().index(), c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) { register_masking_ops(m, {masked_copy_cuda}); }

}  // namespace tinybig_cuda
