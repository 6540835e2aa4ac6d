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
#include <ATen/ops/masked_scatter.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>

#include "ops/compact.h"
#include "ops/masking.h"
#include "ops/op_handles.h"

namespace tinybig_cuda {
namespace {

// The CPU kernels are called by redispatching straight to the CPU key: it is their bits we want,
// whatever other keys the arguments or the thread carry.
const c10::DispatchKeySet kCpuKernel(c10::DispatchKey::CPU);

// The bool mask of `shape`, on the CPU.
at::Tensor cpu_mask(at::IntArrayRef shape, double p, const at::Tensor& rng_state, uint64_t element_offset,
                    std::optional<uint64_t> row_length = std::nullopt) {
  static const auto op = find_op<at::Tensor(c10::SymIntArrayRef, double, const at::Tensor&, c10::SymInt,
                                            std::optional<c10::SymInt>)>("tinybig_cuda::bernoulli_mask");
  const auto symbolic = [](uint64_t value) { return c10::SymInt(static_cast<int64_t>(value)); };
  return op.redispatch(kCpuKernel, c10::fromIntArrayRefSlow(shape), p, rng_state.to(at::kCPU),
                       symbolic(element_offset),
                       row_length ? std::optional<c10::SymInt>(symbolic(*row_length)) : std::nullopt);
}

// The mask on `device`, and the number of entries it keeps.
struct DeviceMask {
  at::Tensor mask;
  int64_t kept;
};

DeviceMask device_mask(at::IntArrayRef shape, double p, const at::Tensor& rng_state,
                       uint64_t element_offset, const c10::Device& device) {
  const at::Tensor mask = cpu_mask(shape, p, rng_state, element_offset);
  return {mask.to(device), mask.sum().item<int64_t>()};
}

void masked_copy_fallback(const at::Tensor& input, at::Tensor& output, double p,
                          const at::Tensor& rng_state, const MaskWindow& window) {
  // A window of one run is a plain offset; any other has rows of the shape's last dimension.
  const bool one_run = window.row_length == static_cast<uint64_t>(window.width);
  const at::Tensor mask = cpu_mask(input.sizes(), p, rng_state, window.offset,
                                   one_run ? std::nullopt : std::optional<uint64_t>(window.row_length))
                              .to(input.device());
  // Select semantics, as on the CPU and CUDA: kept entries copied bit for bit, dropped ones zero.
  at::where_out(output, mask, input, at::zeros({}, input.options()));
}

// Counted by the CPU kernel without a mask.
void count_fallback(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
                    at::Tensor& count) {
  static const auto op = find_op<at::Tensor(c10::SymInt, double, const at::Tensor&, c10::SymInt)>(
      "tinybig_cuda::bernoulli_mask_count");
  count.copy_(op.redispatch(kCpuKernel, c10::SymInt(numel), p, rng_state.to(at::kCPU),
                            c10::SymInt(static_cast<int64_t>(element_offset))));
}

void expand_fallback(const at::Tensor& values, at::Tensor& full, double p, const at::Tensor& rng_state,
                     uint64_t element_offset) {
  const DeviceMask mask = device_mask(full.sizes(), p, rng_state, element_offset, values.device());
  check_values_match_mask(values, KeptCount::exactly(mask.kept), full.sizes());
  // masked_scatter fills the kept positions in row-major order: values[r] goes to the r-th kept one.
  full.zero_().masked_scatter_(mask.mask, values);
}

void compress_fallback(const at::Tensor& full, at::Tensor& values, double p, const at::Tensor& rng_state,
                       uint64_t element_offset) {
  const DeviceMask mask = device_mask(full.sizes(), p, rng_state, element_offset, full.device());
  check_kept_count_matches_mask(values.numel(), KeptCount::exactly(mask.kept), full);
  at::masked_select_out(values, full, mask.mask);  // row-major order of full's logical elements
}

void register_fallback_ops(torch::Library& m) {
  register_masking_ops(m, {masked_copy_fallback});
  register_compact_ops(m, {count_fallback, expand_fallback, compress_fallback});
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, MPS, m) { register_fallback_ops(m); }
TORCH_LIBRARY_IMPL(tinybig_cuda, XPU, m) { register_fallback_ops(m); }
TORCH_LIBRARY_IMPL(tinybig_cuda, PrivateUse1, m) { register_fallback_ops(m); }

}  // namespace tinybig_cuda
