// masked_linear's CPU kernel. At a batch of up to kMaskedMatvecMaxBatch rows of x, in float32 or
// float64, on a CPU with AVX2 or AVX-512, the product is one pass over w that draws the mask while
// it multiplies (core/cpu/masked_matvec.h): at such batches the product reads w once and does
// little else, so the blocked product's masked copy into cache and its read back would cost as
// much again. Every other call takes the blocked product of ops/masked_linear.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "core/cpu/masked_matvec.h"
#include "ops/mask_key.h"
#include "ops/masked_linear.h"

namespace tinybig_cuda {
namespace {

// Weights per task: enough work (~a few microseconds) to amortise waking a thread.
constexpr int64_t kWeightsPerTask = 1 << 15;

bool takes_masked_matvec(CpuIsa isa, const at::Tensor& x_rows, const at::Tensor& w) {
  const at::ScalarType dtype = w.scalar_type();
  return masked_matvec_supports(isa) && (dtype == at::kFloat || dtype == at::kDouble) && w.is_contiguous() &&
         x_rows.size(0) >= 1 && x_rows.size(0) <= kMaskedMatvecMaxBatch;
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& w, double p, const at::Tensor& rng_state,
                             const std::optional<at::Tensor>& bias) {
  check_masked_linear(x, w, p, rng_state, bias);
  const CpuIsa isa = active_cpu_isa();
  at::Tensor x_rows = as_matrix(x);
  if (!takes_masked_matvec(isa, x_rows, w)) return masked_linear_blocked(x, w, p, rng_state, bias);

  if (x_rows.stride(1) != 1) x_rows = x_rows.contiguous();
  const int64_t batch = x_rows.size(0), out_features = w.size(0), in_features = w.size(1);
  at::Tensor y = at::empty({batch, out_features}, x.options());
  const MaskKey key = cpu_mask_key(rng_state, p);
  const int64_t rows_per_task = std::max<int64_t>(1, kWeightsPerTask / std::max<int64_t>(1, in_features));
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "masked_linear_cpu", [&] {
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x_rows.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out_features, rows_per_task, [&](int64_t begin, int64_t end) {
      masked_matvec_rows<scalar_t>(isa, w_data, in_features, begin, end, x_data, x_rows.stride(0), batch, y_data,
                                   out_features, key);
    });
  });
  if (bias && bias->defined()) y.add_(*bias);
  return y.view(with_last(x.sizes(), out_features));
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { m.impl("masked_linear", masked_linear_cpu); }

}  // namespace tinybig_cuda
