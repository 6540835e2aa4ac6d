// masked_linear's CPU kernel. At a batch of up to kMaskedMatvecMaxBatch rows of x, in float32 or
// float64, on a CPU with AVX2 or AVX-512, the product is one pass over w that draws the mask while
// it multiplies (core/cpu/masked_matvec.h): at such batches the product reads w once and does
// little else, so the blocked product's masked copy into cache and its read back would cost as
// much again. Every other call takes the blocked product of ops/masked_linear.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "core/cpu/masked_matvec.h"
#include "ops/mask_key.h"
#include "ops/masked_linear.h"

namespace tinybig_cuda {
namespace {

// Weights per task: enough work (~a few microseconds) to amortise waking a thread.
constexpr int64_t kWeightsPerTask = 1 << 15;

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                             const std::optional<at::Tensor>& bias) {
  const CpuIsa isa = active_cpu_isa();
  const int64_t max_batch = masked_matvec_supports(isa) ? kMaskedMatvecMaxBatch : 0;
  return masked_linear_fused_or_blocked(x, w, p, rng_state, bias, max_batch, [&](const at::Tensor& x_rows, at::Tensor& y) {
    const int64_t out_features = w.size(0), in_features = w.size(1);
    const MaskKey key = cpu_mask_key(rng_state, p);
    const int64_t rows_per_task = std::max<int64_t>(1, kWeightsPerTask / std::max<int64_t>(1, in_features));
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "masked_linear_cpu", [&] {
      const scalar_t* w_data = w.const_data_ptr<scalar_t>();
      const scalar_t* x_data = x_rows.const_data_ptr<scalar_t>();
      scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, out_features, rows_per_task, [&](int64_t begin, int64_t end) {
        masked_matvec_rows<scalar_t>(isa, w_data, in_features, begin, end, x_data, x_rows.stride(0), x_rows.size(0),
                                     y_data, out_features, key);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { m.impl("masked_linear", masked_linear_cpu); }

}  // namespace tinybig_cuda
