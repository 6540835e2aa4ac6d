// CUDA registrations of the compact ops: device guard, current stream, scratch from torch's
// caching allocator, launches and their error checks.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../compact_op.h"
#include "../philox_mask.h"
#include "compact_cuda.h"

namespace tinybig_cuda {
namespace {

// Runs kernels 1-3 of compact_body.h into a fresh scratch, which kernels 4-5 continue from, and
// writes the kept count to `total` (device memory; by default the scratch's last word).
at::Tensor count_into_scratch(int64_t numel, double p, const at::Tensor& rng_state,
                              int64_t element_offset, const c10::cuda::CUDAStream& stream,
                              int64_t* total = nullptr) {
  at::Tensor scratch = at::empty({compact_scratch_words(numel, element_offset)}, rng_state.options());
  int64_t* words = scratch.mutable_data_ptr<int64_t>();
  C10_CUDA_CHECK(launch_compact_count_cuda(numel, static_cast<uint64_t>(element_offset),
                                           rng_state.contiguous().const_data_ptr<int64_t>(),
                                           keep_threshold(p), words,
                                           total != nullptr ? total : words + scratch.numel() - 1,
                                           stream.device_index(), stream));
  return scratch;
}

// The kept count, copied to the host: a sync, which is what refusing a wrong count costs on CUDA.
// Returns false, without syncing, while the stream is captured into a CUDA graph (no sync is
// allowed there): the count is then not checked, but the kernels still never read or write past
// either buffer, whatever the count.
bool read_total(const at::Tensor& scratch, const c10::cuda::CUDAStream& stream, int64_t* total) {
  bool read = false;
  C10_CUDA_CHECK(read_compact_total_cuda(scratch.const_data_ptr<int64_t>() + scratch.numel() - 1,
                                         total, &read, stream));
  return read;
}

at::Tensor count_cuda(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset) {
  check_count_arguments(numel, p, rng_state, element_offset);
  const c10::cuda::CUDAGuard guard(rng_state.device());
  if (numel == 0) return at::zeros({}, rng_state.options());
  at::Tensor count = at::empty({}, rng_state.options());
  count_into_scratch(numel, p, rng_state, element_offset, c10::cuda::getCurrentCUDAStream(),
                     count.mutable_data_ptr<int64_t>());
  return count;  // no sync: the count stays on the device
}

at::Tensor expand_cuda(const at::Tensor& values, double p, const at::Tensor& rng_state,
                       at::IntArrayRef shape, int64_t element_offset) {
  const int64_t numel = check_expand_arguments(values, p, rng_state, shape, element_offset);
  const c10::cuda::CUDAGuard guard(values.device());
  if (numel == 0) {
    check_values_match_mask(values, KeptCount::exactly(0), shape);
    return at::empty(shape, values.options());
  }
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scratch = count_into_scratch(numel, p, rng_state, element_offset, stream);
  int64_t kept = 0;
  if (read_total(scratch, stream, &kept)) check_values_match_mask(values, KeptCount::exactly(kept), shape);

  at::Tensor full = at::empty(shape, values.options());
  const at::Tensor compact = values.contiguous();
  C10_CUDA_CHECK(launch_compact_expand_cuda(
      compact.const_data_ptr(), compact.numel(), full.mutable_data_ptr(),
      static_cast<int>(values.element_size()), numel, static_cast<uint64_t>(element_offset),
      scratch.mutable_data_ptr<int64_t>(), stream.device_index(), stream));
  return full;
}

at::Tensor compress_cuda(const at::Tensor& full, double p, const at::Tensor& rng_state,
                         int64_t kept_count, int64_t element_offset) {
  check_compress_arguments(full, p, rng_state, kept_count, element_offset);
  const c10::cuda::CUDAGuard guard(full.device());
  const int64_t numel = full.numel();
  if (numel == 0) {
    check_kept_count_matches_mask(kept_count, KeptCount::exactly(0), full);
    return at::empty({0}, full.options());
  }
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scratch = count_into_scratch(numel, p, rng_state, element_offset, stream);
  int64_t kept = 0;
  if (read_total(scratch, stream, &kept)) check_kept_count_matches_mask(kept_count, KeptCount::exactly(kept), full);

  at::Tensor values = at::empty({kept_count}, full.options());
  const at::Tensor source = full.contiguous();
  C10_CUDA_CHECK(launch_compact_compress_cuda(
      source.const_data_ptr(), values.mutable_data_ptr(), kept_count,
      static_cast<int>(full.element_size()), numel, static_cast<uint64_t>(element_offset),
      scratch.mutable_data_ptr<int64_t>(), stream.device_index(), stream));
  return values;
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) {
  m.impl("bernoulli_mask_count", count_cuda);
  m.impl("bernoulli_mask_expand", expand_cuda);
  m.impl("bernoulli_mask_compress", compress_cuda);
}

}  // namespace tinybig_cuda
