// The compact ops' kernels: thin __global__ wrappers around the per-thread functions of
// compact_body.h, and their launchers.
#include "core/cuda/compact_body.h"
#include "core/cuda/compact_launch.h"
#include "core/cuda/launch.h"
#include "core/element_size.h"

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

// What kernel 5 reads of a ranked mask's scratch.
struct ChunkRanks {
  const uint64_t* keep_bits;
  const int64_t* chunk_ranks;
};

ChunkRanks read_ranks(const int64_t* scratch, const ScanLayout& scan) {
  return ChunkRanks{reinterpret_cast<const uint64_t*>(scratch), scratch + scan.chunks};
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    count_chunks_kernel(CompactLayout layout, MaskKeySource key_source, uint64_t* keep_bits,
                        int64_t* chunk_counts) {
  count_chunks_thread(layout, resolve_mask_key(key_source), keep_bits, chunk_counts, global_thread(),
                      global_thread_count());
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

// Kernel 5 on a ranked scratch: launch_kernel(Bits{}, layout, chunk ranks, blocks) for the
// values' element size. Compact values are floating point (2, 4 or 8 bytes; never bool), so no 1-byte
// kernels are built.
template <typename LaunchKernel>
cudaError_t launch_per_chunk(int element_size, int64_t numel, uint64_t element_offset,
                             const int64_t* scratch_words, int device, LaunchKernel&& launch_kernel) {
  const CompactLayout layout{numel, element_offset};
  const ScanLayout scan = scan_layout(chunk_count(layout));
  unsigned blocks = 0;
  const cudaError_t status = grid_stride_blocks(scan.chunks, device, &blocks);
  if (status != cudaSuccess) return status;
  return visit_element_bits(element_size, [&](auto bits) {
    if constexpr (sizeof(bits) == 1) {
      return cudaErrorInvalidValue;
    } else {
      launch_kernel(bits, layout, read_ranks(scratch_words, scan), blocks);
      return cudaGetLastError();
    }
  });
}

}  // namespace

int64_t compact_scratch_words(int64_t numel, uint64_t element_offset) {
  const ScanLayout scan = scan_layout(chunk_count(CompactLayout{numel, element_offset}));
  return static_cast<int64_t>(2 * scan.chunks + scan.segments + 1);
}

cudaError_t launch_compact_count_cuda(int64_t numel, uint64_t element_offset, MaskKeySource key_source,
                                      int64_t* scratch_words, int64_t* total, int device,
                                      cudaStream_t stream) {
  const CompactLayout layout{numel, element_offset};
  const ScanLayout scan = scan_layout(chunk_count(layout));
  const Scratch scratch = split_scratch(scratch_words, scan);
  unsigned blocks = 0;
  cudaError_t status = grid_stride_blocks(scan.chunks, device, &blocks);
  if (status != cudaSuccess) return status;
  count_chunks_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(layout, key_source, scratch.keep_bits,
                                                               scratch.chunk_counts);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  if ((status = grid_stride_blocks(scan.segments, device, &blocks)) != cudaSuccess) return status;
  sum_segments_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(scan, scratch.chunk_counts, scratch.segment_sums);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  scan_segments_kernel<<<1, 1, 0, stream>>>(scan, scratch.segment_sums, total);
  return cudaGetLastError();
}

cudaError_t launch_compact_ranks_cuda(int64_t numel, uint64_t element_offset, int64_t* scratch_words,
                                      int device, cudaStream_t stream) {
  const ScanLayout scan = scan_layout(chunk_count(CompactLayout{numel, element_offset}));
  const Scratch scratch = split_scratch(scratch_words, scan);
  unsigned blocks = 0;
  const cudaError_t status = grid_stride_blocks(scan.segments, device, &blocks);
  if (status != cudaSuccess) return status;
  segment_offsets_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(scan, scratch.chunk_counts, scratch.segment_sums);
  return cudaGetLastError();
}

cudaError_t launch_compact_expand_cuda(const void* values, int64_t values_count, void* full,
                                       int element_size, int64_t numel, uint64_t element_offset,
                                       const int64_t* scratch_words, int device, cudaStream_t stream) {
  return launch_per_chunk(element_size, numel, element_offset, scratch_words, device,
                          [&](auto bits, const CompactLayout& layout, const ChunkRanks& ranks, unsigned blocks) {
    using Bits = decltype(bits);
    const ExpandArgs<Bits> args{static_cast<const Bits*>(values), values_count, static_cast<Bits*>(full),
                                ranks.keep_bits, ranks.chunk_ranks, chunks_are_aligned<Bits>(full, element_offset)};
    expand_kernel<Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(layout, args);
  });
}

cudaError_t launch_compact_compress_cuda(const void* full, void* values, int64_t values_count,
                                         int element_size, int64_t numel, uint64_t element_offset,
                                         const int64_t* scratch_words, int device, cudaStream_t stream) {
  return launch_per_chunk(element_size, numel, element_offset, scratch_words, device,
                          [&](auto bits, const CompactLayout& layout, const ChunkRanks& ranks, unsigned blocks) {
    using Bits = decltype(bits);
    const CompressArgs<Bits> args{static_cast<const Bits*>(full), static_cast<Bits*>(values), values_count,
                                  ranks.keep_bits, ranks.chunk_ranks, chunks_are_aligned<Bits>(full, element_offset)};
    compress_kernel<Bits><<<blocks, kThreadsPerBlock, 0, stream>>>(layout, args);
  });
}

}  // namespace tinybig_cuda
