// The CUDA kernels of the compact ops: device guard, current stream, scratch from torch's caching
// allocator, launches and their error checks, and where the kept count comes from.
//
// Expand and compress must refuse a wrong count, so the host must know the mask's count:
//   - rng_state on the CPU: the host reads the state without waiting for the device, and a mask
//     ranked once stays in a cache keyed on its identity (core/mask_cache.h), with its count. Every
//     later call on it is one kernel (kernel 5 of core/cuda/compact_body.h) and no host sync.
//   - rng_state on the GPU: the host cannot know the state's value without waiting for it, so
//     each call ranks the mask and copies its count back: one host sync per call.
// While a CUDA graph is captured nothing may sync, and each replay must read the state's value at
// replay: the mask is ranked in the graph, from the state on the GPU or (pinned) on the CPU.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "core/cuda/compact_launch.h"
#include "ops/compact.h"
#include "ops/mask_key.h"
#include "core/mask_cache.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {
namespace {

// A mask ranked on the device (core/cuda/compact_launch.h), and its kept count when the host knows it.
struct RankedMask {
  at::Tensor scratch;
  std::optional<int64_t> kept;  // unknown while a CUDA graph is captured, where no sync is allowed
};

// Ranked masks of CPU states: 1/4 byte per element (a 4096x4096 mask's is 4 MiB), at most 1024
// masks and 256 MiB of device memory per process. tinybig_cuda.empty_compact_cache() frees them,
// as does running out of device memory for a new scratch.
MaskCache<RankedMask>& ranked_mask_cache() {
  return MaskCache<RankedMask>::instance(/*max_entries=*/1024, /*max_bytes=*/size_t{256} << 20);
}

MaskKeySource key_source(const at::Tensor& rng_state, double p) {
  if (rng_state.is_cpu()) return MaskKeySource{nullptr, cpu_mask_key(rng_state, p)};
  return MaskKeySource{rng_state.const_data_ptr<int64_t>(), MaskKey{0, 0, keep_threshold(p)}};
}

// Kernels 1-3 of core/cuda/compact_body.h into a fresh scratch: the kept count goes to `total` (device
// memory; by default the scratch's last word), the chunk counts stay for kernel 4.
at::Tensor count_into_scratch(int64_t numel, const MaskKeySource& source, uint64_t element_offset,
                              const at::TensorOptions& options, const c10::cuda::CUDAStream& stream,
                              int64_t* total = nullptr) {
  const int64_t scratch_words = compact_scratch_words(numel, element_offset);
  at::Tensor scratch;
  try {
    scratch = at::empty({scratch_words}, options.dtype(at::kLong));
  } catch (const c10::OutOfMemoryError&) {
    ranked_mask_cache().clear();  // what the cache holds is worth less than this call
    scratch = at::empty({scratch_words}, options.dtype(at::kLong));
  }
  int64_t* words = scratch.mutable_data_ptr<int64_t>();
  C10_CUDA_CHECK(launch_compact_count_cuda(numel, element_offset, source, words,
                                           total != nullptr ? total : words + scratch.numel() - 1,
                                           stream.device_index(), stream));
  return scratch;
}

bool capturing_graph(const c10::cuda::CUDAStream& stream) {
  return c10::cuda::captureStatusMayInitCtx(stream) != c10::cuda::CaptureStatus::None;
}

// Kernels 1-4 into a fresh scratch, and (when read_count) the count copied to the host: a sync.
RankedMask rank_mask(int64_t numel, const MaskKeySource& source, uint64_t element_offset,
                     const at::TensorOptions& options, const c10::cuda::CUDAStream& stream, bool read_count) {
  RankedMask mask{count_into_scratch(numel, source, element_offset, options, stream), std::nullopt};
  int64_t* words = mask.scratch.mutable_data_ptr<int64_t>();
  C10_CUDA_CHECK(launch_compact_ranks_cuda(numel, element_offset, words, stream.device_index(), stream));
  if (read_count) {
    int64_t total = 0;
    // c10's copy-and-sync, so that torch.cuda.set_sync_debug_mode sees this sync.
    c10::cuda::memcpy_and_sync(&total, words + mask.scratch.numel() - 1, sizeof(int64_t),
                               cudaMemcpyDeviceToHost, stream);
    mask.kept = total;
  }
  return mask;
}

// The ranked mask of a call, and its count where the host can know it.
//
// While a CUDA graph is captured, the graph must own the memory it replays on and read the state
// at each replay: the mask is ranked into the capture's own memory, from the state on the GPU or
// from a copy the graph makes of a pinned CPU one. The count is then known only for a CPU state
// whose mask an earlier call (a warm-up) ranked, and is checked for the state's value at capture;
// otherwise it is not checked. Either way the kernels never read or write past either buffer.
RankedMask ranked_mask(const char* op, int64_t numel, double p, const at::Tensor& rng_state,
                       uint64_t element_offset, const at::TensorOptions& device_options,
                       const c10::cuda::CUDAStream& stream) {
  const MaskKeySource source = key_source(rng_state, p);
  const bool capturing = capturing_graph(stream);
  if (!rng_state.is_cpu()) {
    return rank_mask(numel, source, element_offset, device_options, stream, /*read_count=*/!capturing);
  }
  const MaskIdentity identity{source.key, element_offset, numel, stream.device_index()};
  std::optional<RankedMask> cached = ranked_mask_cache().find(identity);
  if (capturing) {
    // (rng_state is the caller's tensor made contiguous: a strided one is a pageable copy here.)
    TORCH_CHECK_VALUE(rng_state.is_pinned(), op, ": expected rng_state on ", device_options.device(),
                      ", or contiguous in pinned CPU memory, while a CUDA graph is captured (each replay ",
                      "reads its value), but got a CPU tensor that is not; rng_state.contiguous().pin_memory() ",
                      "is one");
    at::Tensor device_state = at::empty({2}, device_options.dtype(at::kLong));
    device_state.copy_(rng_state, /*non_blocking=*/true);  // a copy node: replays read the state
    const MaskKeySource from_device{device_state.const_data_ptr<int64_t>(), source.key};
    RankedMask mask = rank_mask(numel, from_device, element_offset, device_options, stream, /*read_count=*/false);
    if (cached.has_value()) mask.kept = cached->kept;
    return mask;
  }
  if (cached.has_value()) {
    // The cache may drop it while this stream still reads it: tell the allocator about the stream.
    c10::cuda::CUDACachingAllocator::recordStream(cached->scratch.storage().data_ptr(), stream);
    return *cached;
  }
  RankedMask mask = rank_mask(numel, source, element_offset, device_options, stream, /*read_count=*/true);
  // The sync finished the ranking, so any stream may read the cached scratch from now on.
  ranked_mask_cache().insert(identity, mask, mask.scratch.nbytes());
  return mask;
}

void count_cuda(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
                at::Tensor& count) {
  // rng_state is on the GPU here: the count op dispatches on it, its only tensor.
  const c10::cuda::CUDAGuard guard(rng_state.device());
  count_into_scratch(numel, key_source(rng_state, p), element_offset, rng_state.options(),
                     c10::cuda::getCurrentCUDAStream(), count.mutable_data_ptr<int64_t>());
  // no sync: the count stays on the device
}

void expand_cuda(const at::Tensor& values, at::Tensor& full, double p, const at::Tensor& rng_state,
                 uint64_t element_offset) {
  const c10::cuda::CUDAGuard guard(values.device());
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  const RankedMask mask = ranked_mask("tinybig_cuda.bernoulli_mask_expand", full.numel(), p, rng_state,
                                      element_offset, values.options(), stream);
  if (mask.kept.has_value()) check_values_match_mask(values, KeptCount::exactly(*mask.kept), full.sizes());
  const at::Tensor compact = values.contiguous();
  C10_CUDA_CHECK(launch_compact_expand_cuda(
      compact.const_data_ptr(), compact.numel(), full.mutable_data_ptr(),
      static_cast<int>(values.element_size()), full.numel(), element_offset,
      mask.scratch.const_data_ptr<int64_t>(), stream.device_index(), stream));
}

void compress_cuda(const at::Tensor& full, at::Tensor& values, double p, const at::Tensor& rng_state,
                   uint64_t element_offset) {
  const c10::cuda::CUDAGuard guard(full.device());
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  const RankedMask mask = ranked_mask("tinybig_cuda.bernoulli_mask_compress", full.numel(), p, rng_state,
                                      element_offset, full.options(), stream);
  if (mask.kept.has_value()) check_kept_count_matches_mask(values.numel(), KeptCount::exactly(*mask.kept), full);
  const at::Tensor source = full.contiguous();
  C10_CUDA_CHECK(launch_compact_compress_cuda(
      source.const_data_ptr(), values.mutable_data_ptr(), values.numel(),
      static_cast<int>(full.element_size()), full.numel(), element_offset,
      mask.scratch.const_data_ptr<int64_t>(), stream.device_index(), stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CUDA, m) { register_compact_ops(m, {count_cuda, expand_cuda, compress_cuda}); }

}  // namespace tinybig_cuda
