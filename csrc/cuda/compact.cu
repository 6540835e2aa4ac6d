// The compact ops' kernels: thin __global__ wrappers around the per-thread functions of
// compact_body.h, and their launchers.
#include "cuda/compact_body.h"
#include "cuda/compact_launch.h"
#include "cuda/launch.h"
#include "element_size.h"

namespace tinybig_cuda {
namespace {

struct Scratch {
  uint64_t* keep_bits;
  int64_t* chunk_counts;  // chunk ranks after kernel 4
  int64_t* segment_sums;  // segment offsets after kernel 3
};

Scratch split_scratch(int64_t* scratch, const ScanLayout& scan) {
  return Scratch{reinterpret_cast<uint64_t*>(scratch), scratch + scan.chunks,
                 scratch + 2 * scan.chunks};
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    count_chunks_kernel(CompactLayout layout, const int64_t* rng_state, uint64_t threshold,
                        uint64_t* keep_bits, int64_t* chunk_counts) {
  const MaskKey key{static_cast<uint64_t>(rng_state[0]), static_cast<uint64_t>(rng_state[1]), threshold};
  count_chunks_thread(layout, key, keep_bits, chunk_counts, global_thread(), global_thread_count());
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    sum_segments_kernel(ScanLayout scan, const int64_t* chunk_counts, int64_t* segment_sums) {
  sum_segments_thread(scan, chunk_counts, segment_sums, global_thread(), global_thread_count());
}

__global__ void scan_segments_kernel(ScanLayout scan, int64_t* segment_sums, int64_t* total) {
  scan_segments(scan, segment_sums, total);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    segment_offsets_kernel(ScanLayout scan, int64_t* chunk_counts, const int64_t* segment_offsets) {
  segment_offsets_thread(scan, chunk_counts, segment_offsets, global_thread(), global_thread_count());
}

template <typename Bits>
__global__ void __launch_bounds__(kThreadsPerBlock)
    expand_kernel(CompactLayout layout, ExpandArgs<Bits> args) {
  expand_thread(layout, args, global_thread(), global_thread_count());
}

template <typename Bits>
__global__ void __launch_bounds__(kThreadsPerBlock)
    compress_kernel(CompactLayout layout, CompressArgs<Bits> args) {
  compress_thread(layout, args, global_thread(), global_thread_count());
}

cudaError_t launch_segment_offsets(const ScanLayout& scan, const Scratch& scratch, int device,
                                   cudaStream_t stream) {
  unsigned blocks = 0;
  cudaError_t status = grid_stride_blocks(scan.segments, device, &blocks);
  if (status != cudaSuccess) return status;
  segment_offsets_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(scan, scratch.chunk_counts, scratch.segment_sums);
  return cudaGetLastError();
}

// Kernel 4 on the scratch that launch_compact_count_cuda filled, then kernel 5:
// launch_kernel(Bits{}, layout, scratch, blocks) for the values' element size. Compact values are
// floating point (2, 4 or 8 bytes; never bool), so no 1-byte kernels are built.
template <typename LaunchKernel>
cudaError_t rank_then_launch(int element_size, int64_t numel, uint64_t element_offset, int64_t* scratch_words,
                             int device, cudaStream_t stream, LaunchKernel&& launch_kernel) {
  const CompactLayout layout{numel, element_offset};
  const ScanLayout scan = scan_layout(chunk_count(layout));
  const Scratch scratch = split_scratch(scratch_words, scan);
  cudaError_t status = launch_segment_offsets(scan, scratch, device, stream);
  if (status != cudaSuccess) return status;
  unsigned blocks = 0;
  if ((status = grid_stride_blocks(scan.chunks, device, &blocks)) != cudaSuccess) return status;
  return visit_element_bits(element_size, [&](auto bits) {
    if constexpr (sizeof(bits) == 1) {
      return cudaErrorInvalidValue;
    } else {
      launch_kernel(bits, layout, scratch, blocks);
      return cudaGetLastError();
    }
  });
}

}  // namespace

int64_t compact_scratch_words(int64_t numel, uint64_t element_offset) {
  const ScanLayout scan = scan_layout(chunk_count(CompactLayout{numel, element_offset}));
  return static_cast<int64_t>(2 * scan.chunks + scan.segments + 1);
}

cudaError_t launch_compact_count_cuda(int64_t numel, uint64_t element_offset,
                                      const int64_t* rng_state, uint64_t threshold,
                                      int64_t* scratch_words, int64_t* total, int device,
                                      cudaStream_t stream) {
  const CompactLayout layout{numel, element_offset};
  const ScanLayout scan = scan_layout(chunk_count(layout));
  const Scratch scratch = split_scratch(scratch_words, scan);
  unsigned blocks = 0;
  cudaError_t status = grid_stride_blocks(scan.chunks, device, &blocks);
  if (status != cudaSuccess) return status;
  count_chunks_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(layout, rng_state, threshold,
                                                               scratch.keep_bits, scratch.chunk_counts);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  if ((status = grid_stride_blocks(scan.segments, device, &blocks)) != cudaSuccess) return status;
  sum_segments_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(scan, scratch.chunk_counts, scratch.segment_sums);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  scan_segments_kernel<<<1, 1, 0, stream>>>(scan, scratch.segment_sums, total);
  return cudaGetLastError();
}

cudaError_t read_compact_total_cuda(const int64_t* total, int64_t* host_total, bool* read,
                                    cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t status = cudaStreamIsCapturing(stream, &capture);
  if (status != cudaSuccess) return status;
  *read = capture == cudaStreamCaptureStatusNone;
  if (!*read) return cudaSuccess;
  status = cudaMemcpyAsync(host_total, total, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  if (status != cudaSuccess) return status;
  return cudaStreamSynchronize(stream);
}

cudaError_t launch_compact_expand_cuda(const void* values, int64_t values_count, void* full,
                                       int element_size, int64_t numel, uint64_t element_offset,
                                       int64_t* scratch_words, int device, cudaStream_t stream) {
  return rank_then_launch(element_size, numel, element_offset, scratch_words, device, stream,
                          [&](auto bits, const CompactLayout& layout, const Scratch& scratch, unsigned blocks) {
    using Bits = decltype(bits);
    const ExpandArgs<Bits> args{static_cast<const Bits*>(values), values_count, static_cast<Bits*>(full),
                                scratch.keep_bits, scratch.chunk_counts, chunks_are_aligned<Bits>(full, element_offset)};
    expand_kernel<Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(layout, args);
  });
}

cudaError_t launch_compact_compress_cuda(const void* full, void* values, int64_t values_count,
                                         int element_size, int64_t numel, uint64_t element_offset,
                                         int64_t* scratch_words, int device, cudaStream_t stream) {
  return rank_then_launch(element_size, numel, element_offset, scratch_words, device, stream,
                          [&](auto bits, const CompactLayout& layout, const Scratch& scratch, unsigned blocks) {
    using Bits = decltype(bits);
    const CompressArgs<Bits> args{static_cast<const Bits*>(full), static_cast<Bits*>(values), values_count,
                                  scratch.keep_bits, scratch.chunk_counts, chunks_are_aligned<Bits>(full, element_offset)};
    compress_kernel<Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(layout, args);
  });
}

}  // namespace tinybig_cuda
