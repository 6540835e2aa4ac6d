// The CUDA kernels of the compact ops: device guard, current stream, scratch from torch's caching
// allocator, launches and their error checks.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/compact_launch.h"
#include "ops/compact.h"
#include "philox_mask.h"

namespace tinybig_cuda {
namespace {

// Runs kernels 1-3 of compact_body.h into a fresh scratch, which kernels 4-5 continue from, and
// writes the kept count to `total` (device memory; by default the scratch's last word).
at::Tensor count_into_scratch(int64_t numel, double p, const at::Tensor& rng_state,
                              uint64_t element_offset, const c10::cuda::CUDAStream& stream,
                              int64_t* total = nullptr) {
  at::Tensor scratch = at::empty({compact_scratch_words(numel, element_offset)}, rng_state.options());
  int64_t* words = scratch.mutable_data_ptr<int64_t>();
  C10_CUDA_CHECK(launch_compact_count_cuda(numel, element_offset,
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

void count_cuda(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
                at::Tensor& count) {
  const c10::cuda::CUDAGuard guard(rng_state.device());
  count_into_scratch(numel, p, rng_state, element_offset, c10::cuda::getCurrentCUDAStream(),
                     count.mutable_data_ptr<int64_t>());
  // no sync: the count stays on the device
}

// Kernels 1-3 into a fresh scratch for kernels 4-5, with the kept count passed to `check_kept`
// (which refuses a wrong one) unless the stream is being captured.
template <typename CheckKept>
at::Tensor checked_scratch(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
                           const c10::cuda::CUDAStream& stream, CheckKept&& check_kept) {
  at::Tensor scratch = count_into_scratch(numel, p, rng_state, element_offset, stream);
  int64_t kept = 0;
  if (read_total(scratch, stream, &kept)) check_kept(KeptCount::exactly(kept));
  return scratch;
}

void expand_cuda(const at::Tensor& values, at::Tensor& full, double p, const at::Tensor& rng_state,
                 uint64_t element_offset) {
  const c10::cuda::CUDAGuard guard(values.device());
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scratch = checked_scratch(full.numel(), p, rng_state, element_offset, stream,
                                       [&](const KeptCount& kept) { check_values_match_mask(values, kept, full.sizes()); });
  const at::Tensor compact = values.contiguous();
  C10_CUDA_CHECK(launch_compact_expand_cuda(
      compact.const_data_ptr(), compact.numel(), full.mutable_data_ptr(),
      static_cast<int>(values.element_size()), full.numel(), element_offset,
      scratch.mutable_data_ptr<int64_t>(), stream.device_index(), stream));
}

void compress_cuda(const at::Tensor& full, at::Tensor& values, double p, const at::Tensor& rng_state,
                   uint64_t element_offset) {
  const c10::cuda::CUDAGuard guard(full.device());
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scratch = checked_scratch(full.numel(), p, rng_state, element_offset, stream,
                                       [&](const KeptCount& kept) { check_kept_count_matches_mask(values.numel(), kept, full); });
  const at::Tensor source = full.contiguous();
  C10_CUDA_CHECK(launch_compact_compress_cuda(
      source.const_data_ptr(), values.mutable_data_ptr(), values.numel(),
      static_cast<int>(full.element_size()), full.numel(), element_offset,
      scratch.mutable_data_ptr<int64_t>(), stream.device_index(), stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) { register_compact_ops(m, {count_cuda, expand_cuda, compress_cuda}); }

}  // namespace tinybig_cuda
