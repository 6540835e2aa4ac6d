// CPU kernels of the tinybig_cuda ops: the masked copy of masked_copy.cpp, split over threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../mask_op.h"
#include "cpu_op_helpers.h"
#include "masked_copy.h"

namespace tinybig_cuda {
namespace {

// Elements per task: enough work (~a few microseconds) to amortise waking a thread.
constexpr int64_t kElementsPerTask = 1 << 15;

void masked_copy_cpu(const at::Tensor& input, at::Tensor& output, double p,
                     const at::Tensor& rng_state, uint64_t element_offset) {
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const void* in = input.const_data_ptr();
  void* out = output.mutable_data_ptr();
  const int element_size = static_cast<int>(input.element_size());
  at::parallel_for(0, input.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
    masked_copy_range(isa, in, out, element_size, begin, end, element_offset, key);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { register_masking_ops<masked_copy_cpu>(m); }

}  // namespace tinybig_cuda
