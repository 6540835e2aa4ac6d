// Kernels of every tinybig_cuda op for devices without a kernel of their own (Apple's MPS, Intel's
// XPU, and PrivateUse1, the key out-of-tree backends register under): the CPU kernel makes the
// boolean mask from the contract's Philox stream, one copy moves it to the device, and stock torch
// ops (where, masked_scatter, masked_select) apply it there. So the bits are the CPU kernel's by
// construction, and the device needs nothing but those ops.
//
// The price is one wait for the device (reading the 16-byte rng_state back) and one host-to-device
// copy of one byte per element per call: tinyBIG's own masking moves its mask the same way.
//
// CPU and CUDA are deliberately absent: they have native kernels, and a build without the CUDA
// kernels must refuse CUDA tensors rather than run this slower path unasked.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/masked_scatter.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "compact_op.h"
#include "mask_op.h"
#include "op_handles.h"

namespace tinybig_cuda {
namespace {

// The CPU kernels are called by redispatching straight to the CPU key: it is their bits we want,
// whatever other keys the arguments or the thread carry.
const c10::DispatchKeySet kCpuKernel(c10::DispatchKey::CPU);

// The bool mask of `shape`, on the CPU.
at::Tensor cpu_mask(at::IntArrayRef shape, double p, const at::Tensor& rng_state, int64_t element_offset,
                    std::optional<int64_t> row_length = std::nullopt) {
  static const auto op = find_op<at::Tensor(c10::SymIntArrayRef, double, const at::Tensor&, c10::SymInt,
                                            std::optional<c10::SymInt>)>("tinybig_cuda::bernoulli_mask");
  return op.redispatch(kCpuKernel, c10::fromIntArrayRefSlow(shape), p, rng_state.to(at::kCPU),
                       c10::SymInt(element_offset),
                       row_length ? std::optional<c10::SymInt>(*row_length) : std::nullopt);
}

// The mask on `device`, and the number of entries it keeps.
struct DeviceMask {
  at::Tensor mask;
  int64_t kept;
};

DeviceMask device_mask(at::IntArrayRef shape, double p, const at::Tensor& rng_state,
                       int64_t element_offset, const c10::Device& device) {
  const at::Tensor mask = cpu_mask(shape, p, rng_state, element_offset);
  return {mask.to(device), mask.sum().item<int64_t>()};
}

at::Tensor mask_apply_fallback(const at::Tensor& w, double p, const at::Tensor& rng_state,
                               int64_t element_offset, std::optional<int64_t> row_length) {
  check_mask_apply_arguments(w, p, rng_state, element_offset, row_length);
  const at::Tensor mask = cpu_mask(w.sizes(), p, rng_state, element_offset, row_length).to(w.device());
  // Select semantics, as on the CPU and CUDA: kept entries copied bit for bit, dropped ones +0.0.
  at::Tensor output = at::empty(w.sizes(), w.options());
  return at::where_out(output, mask, w, at::zeros({}, w.options()));
}

// The CPU kernel's argument checks are all this op needs too.
at::Tensor mask_fallback(at::IntArrayRef shape, double p, const at::Tensor& rng_state,
                         int64_t element_offset, std::optional<int64_t> row_length) {
  return cpu_mask(shape, p, rng_state, element_offset, row_length).to(rng_state.device());
}

// Counted by the CPU kernel without a mask; its argument checks are all this op needs.
at::Tensor count_fallback(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset) {
  static const auto op = find_op<at::Tensor(c10::SymInt, double, const at::Tensor&, c10::SymInt)>(
      "tinybig_cuda::bernoulli_mask_count");
  return op.redispatch(kCpuKernel, c10::SymInt(numel), p, rng_state.to(at::kCPU), c10::SymInt(element_offset))
      .to(rng_state.device());
}

at::Tensor expand_fallback(const at::Tensor& values, double p, const at::Tensor& rng_state,
                           at::IntArrayRef shape, int64_t element_offset) {
  check_expand_arguments(values, p, rng_state, shape, element_offset);
  const DeviceMask mask = device_mask(shape, p, rng_state, element_offset, values.device());
  check_values_match_mask(values, KeptCount::exactly(mask.kept), shape);
  // masked_scatter fills the kept positions in row-major order: values[r] goes to the r-th kept one.
  return at::masked_scatter(at::zeros(shape, values.options()), mask.mask, values);
}

at::Tensor compress_fallback(const at::Tensor& full, double p, const at::Tensor& rng_state,
                             int64_t kept_count, int64_t element_offset) {
  check_compress_arguments(full, p, rng_state, kept_count, element_offset);
  const DeviceMask mask = device_mask(full.sizes(), p, rng_state, element_offset, full.device());
  check_kept_count_matches_mask(kept_count, KeptCount::exactly(mask.kept), full);
  return at::masked_select(full, mask.mask);  // row-major order of full's logical elements
}

void register_fallback_ops(torch::Library& m) {
  m.impl("bernoulli_mask_apply", mask_apply_fallback);
  m.impl("bernoulli_mask", mask_fallback);
  m.impl("bernoulli_mask_count", count_fallback);
  m.impl("bernoulli_mask_expand", expand_fallback);
  m.impl("bernoulli_mask_compress", compress_fallback);
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, MPS, m) { register_fallback_ops(m); }
TORCH_LIBRARY_IMPL(tinybig_cuda, XPU, m) { register_fallback_ops(m); }
TORCH_LIBRARY_IMPL(tinybig_cuda, PrivateUse1, m) { register_fallback_ops(m); }

}  // namespace tinybig_cuda
