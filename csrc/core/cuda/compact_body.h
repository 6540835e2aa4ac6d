// The CUDA compact kernels' per-thread work as host+device functions, so the C++ tests can run
// every thread of a simulated launch on the host and compare its bits with a scalar reference.
//
// A compact op runs as a chain of small kernels, each a grid-stride loop of independent threads
// (no shared memory, no warp intrinsics), so that a simulated launch is simply a loop over
// threads, kernel after kernel:
//
//   1. count_chunks_thread      chunk c of 64 elements: its keep bits and their popcount
//   2. sum_segments_thread      segment s of consecutive chunks: the sum of its chunk counts
//   3. scan_segments            one thread: exclusive prefix sum of the segment sums, and the total
//   4. segment_offsets_thread   segment s: its chunk counts become the chunks' first ranks
//   5. expand_thread /          chunk c: scatter values[rank...] to the kept positions of its 64
//      compress_thread          elements, or gather them from there
//
// Kernels 1-4 rank a mask: they leave each chunk's 64 keep bits (1 bit per element) and first
// rank in a scratch buffer, and the total kept count in its last word. The count op runs 1-3.
// Expand and compress run kernel 5 on a ranked mask's scratch -- one they rank for the call, or
// one an earlier call on the same mask left in the cache (ops/cuda/compact_cuda.cpp) -- so the
// Philox stream is generated at most once per call, and not at all on a cached mask.
#pragma once

#include <cstdint>

#include "core/philox_mask.h"
#include "core/cuda/masked_copy_body.h"

namespace tinybig_cuda {

// One chunk is one 64-bit word of keep bits: 16 Philox blocks. Chunks are aligned to global
// element indices, so only the first and last chunk of a shard are partial.
constexpr int kChunkElements = 64;
constexpr int kChunkPhiloxBlocks = kChunkElements / kWordsPerBlock;

// Kernel 3 scans the segment sums on one thread, so there are at most this many segments.
constexpr uint64_t kMaxScanSegments = 1024;

TINYBIG_HOST_DEVICE int popcount64(uint64_t bits) {
#ifdef __CUDA_ARCH__
  return __popcll(bits);
#else
  return __builtin_popcountll(bits);
#endif
}

// The full matrix (or shard) the compact values belong to.
struct CompactLayout {
  int64_t numel;            // > 0
  uint64_t element_offset;  // global index of its element 0
};

TINYBIG_HOST_DEVICE uint64_t first_chunk(const CompactLayout& layout) {
  return layout.element_offset / kChunkElements;
}

TINYBIG_HOST_DEVICE uint64_t chunk_count(const CompactLayout& layout) {
  const uint64_t last = (layout.element_offset + layout.numel - 1) / kChunkElements;
  return last - first_chunk(layout) + 1;
}

// Global index of the first element of chunk `chunk` (counted from the shard's first chunk); it
// may lie before the shard's first element.
TINYBIG_HOST_DEVICE uint64_t chunk_begin(const CompactLayout& layout, uint64_t chunk) {
  return (first_chunk(layout) + chunk) * kChunkElements;
}

// Bit e is set iff global element chunk_begin + e lies inside the shard and is kept.
TINYBIG_HOST_DEVICE uint64_t chunk_keep_bits(const CompactLayout& layout, const MaskKey& key,
                                             uint64_t chunk) {
  const uint64_t begin = chunk_begin(layout, chunk);
  uint64_t bits = 0;
TINYBIG_UNROLL
  for (int block = 0; block < kChunkPhiloxBlocks; ++block) {
    const PhiloxWords words = mask_block_words(begin / kWordsPerBlock + block, key);
TINYBIG_UNROLL
    for (int word = 0; word < kWordsPerBlock; ++word) {
      const uint64_t kept = keeps(words.word[word], key.threshold) ? 1 : 0;
      bits |= kept << (block * kWordsPerBlock + word);
    }
  }
  if (begin < layout.element_offset) {  // the shard starts inside this chunk
    bits &= ~uint64_t{0} << (layout.element_offset - begin);
  }
  const uint64_t end = layout.element_offset + layout.numel;
  if (end - begin < kChunkElements) {  // the shard ends inside this chunk
    bits &= (uint64_t{1} << (end - begin)) - 1;
  }
  return bits;
}

// ---------------------------------------------------------------- kernels 1-4: counts and ranks

// Kernel 1. chunk_counts[c] = number of kept elements of chunk c; keep_bits[c] = its bits (when
// keep_bits is not null).
TINYBIG_HOST_DEVICE void count_chunks_thread(const CompactLayout& layout, const MaskKey& key,
                                             uint64_t* keep_bits, int64_t* chunk_counts,
                                             uint64_t thread, uint64_t thread_count) {
  const uint64_t chunks = chunk_count(layout);
  for (uint64_t c = thread; c < chunks; c += thread_count) {
    const uint64_t bits = chunk_keep_bits(layout, key, c);
    if (keep_bits != nullptr) keep_bits[c] = bits;
    chunk_counts[c] = popcount64(bits);
  }
}

// How the chunk counts are split into segments for the scan.
struct ScanLayout {
  uint64_t chunks;
  uint64_t chunks_per_segment;
  uint64_t segments;  // <= kMaxScanSegments
};

TINYBIG_HOST_DEVICE ScanLayout scan_layout(uint64_t chunks) {
  const uint64_t per_segment = (chunks + kMaxScanSegments - 1) / kMaxScanSegments;
  const uint64_t chunks_per_segment = per_segment > 0 ? per_segment : 1;
  return ScanLayout{chunks, chunks_per_segment, (chunks + chunks_per_segment - 1) / chunks_per_segment};
}

TINYBIG_HOST_DEVICE uint64_t segment_end(const ScanLayout& scan, uint64_t segment) {
  const uint64_t end = (segment + 1) * scan.chunks_per_segment;
  return end < scan.chunks ? end : scan.chunks;
}

// Kernel 2. segment_sums[s] = the sum of the chunk counts of segment s.
TINYBIG_HOST_DEVICE void sum_segments_thread(const ScanLayout& scan, const int64_t* chunk_counts,
                                             int64_t* segment_sums, uint64_t thread,
                                             uint64_t thread_count) {
  for (uint64_t s = thread; s < scan.segments; s += thread_count) {
    int64_t sum = 0;
    for (uint64_t c = s * scan.chunks_per_segment; c < segment_end(scan, s); ++c) sum += chunk_counts[c];
    segment_sums[s] = sum;
  }
}

// Kernel 3, one thread. Replaces segment_sums by their exclusive prefix sum and writes the total
// number of kept elements.
TINYBIG_HOST_DEVICE void scan_segments(const ScanLayout& scan, int64_t* segment_sums, int64_t* total) {
  int64_t running = 0;
  for (uint64_t s = 0; s < scan.segments; ++s) {
    const int64_t sum = segment_sums[s];
    segment_sums[s] = running;
    running += sum;
  }
  *total = running;
}

// Kernel 4. Replaces the chunk counts of segment s by the rank of each chunk's first kept element.
TINYBIG_HOST_DEVICE void segment_offsets_thread(const ScanLayout& scan, int64_t* chunk_counts,
                                                const int64_t* segment_offsets, uint64_t thread,
                                                uint64_t thread_count) {
  for (uint64_t s = thread; s < scan.segments; s += thread_count) {
    int64_t running = segment_offsets[s];
    for (uint64_t c = s * scan.chunks_per_segment; c < segment_end(scan, s); ++c) {
      const int64_t count = chunk_counts[c];
      chunk_counts[c] = running;
      running += count;
    }
  }
}

// ---------------------------------------------------------------- kernel 5: scatter and gather

template <typename Bits>
struct ExpandArgs {
  const Bits* values;         // the compact values
  int64_t values_count;       // their length: ranks at or past it are never read
  Bits* full;                 // the full matrix, contiguous
  const uint64_t* keep_bits;  // from kernel 1
  const int64_t* chunk_ranks; // from kernel 4
  bool vectorized;            // the full matrix is 16-byte aligned at every chunk boundary
};

template <typename Bits>
struct CompressArgs {
  const Bits* full;           // the full matrix, contiguous
  Bits* values;               // the compact values
  int64_t values_count;       // their length: ranks at or past it are never written
  const uint64_t* keep_bits;  // from kernel 1
  const int64_t* chunk_ranks; // from kernel 4
  bool vectorized;            // the full matrix is 16-byte aligned at every chunk boundary
};

// Chunks start at multiples of 64 global elements, so they are 16-byte aligned in a buffer whose
// global element 0 would be.
template <typename Bits>
inline bool chunks_are_aligned(const void* full, uint64_t element_offset) {
  return (reinterpret_cast<uintptr_t>(full) - element_offset * sizeof(Bits)) % kVectorBytes == 0;
}

TINYBIG_HOST_DEVICE bool chunk_is_whole(const CompactLayout& layout, uint64_t begin) {
  return begin >= layout.element_offset &&
         begin + kChunkElements <= layout.element_offset + layout.numel;
}

// One chunk of expand: its 64 output elements in order, each either the next value or zero bits.
template <typename Bits>
TINYBIG_HOST_DEVICE void expand_chunk(const CompactLayout& layout, const ExpandArgs<Bits>& args,
                                      uint64_t chunk) {
  constexpr int kLanes = kVectorBytes / sizeof(Bits);
  const uint64_t bits = args.keep_bits[chunk];
  int64_t rank = args.chunk_ranks[chunk];
  const uint64_t begin = chunk_begin(layout, chunk);
  if (args.vectorized && chunk_is_whole(layout, begin)) {
    Bits* out = args.full + (begin - layout.element_offset);
TINYBIG_UNROLL
    for (int v = 0; v < kChunkElements / kLanes; ++v) {
      Vector<Bits> vector;
TINYBIG_UNROLL
      for (int lane = 0; lane < kLanes; ++lane) {
        const bool kept = (bits >> (v * kLanes + lane)) & 1;
        vector.lane[lane] = kept && rank < args.values_count ? args.values[rank] : Bits(0);
        rank += kept;
      }
      store_vector(out + v * kLanes, vector);
    }
    return;
  }
  const uint64_t end = layout.element_offset + layout.numel;
  for (int e = 0; e < kChunkElements; ++e) {
    const uint64_t global = begin + e;
    if (global < layout.element_offset || global >= end) continue;
    const bool kept = (bits >> e) & 1;
    args.full[global - layout.element_offset] =
        kept && rank < args.values_count ? args.values[rank] : Bits(0);
    rank += kept;
  }
}

// One chunk of compress: its kept elements, in order, to values[rank...].
template <typename Bits>
TINYBIG_HOST_DEVICE void compress_chunk(const CompactLayout& layout, const CompressArgs<Bits>& args,
                                        uint64_t chunk) {
  constexpr int kLanes = kVectorBytes / sizeof(Bits);
  uint64_t bits = args.keep_bits[chunk];
  int64_t rank = args.chunk_ranks[chunk];
  const uint64_t begin = chunk_begin(layout, chunk);
  if (args.vectorized && chunk_is_whole(layout, begin)) {
    const Bits* in = args.full + (begin - layout.element_offset);
TINYBIG_UNROLL
    for (int v = 0; v < kChunkElements / kLanes; ++v) {
      const Vector<Bits> vector = load_vector(in + v * kLanes);
TINYBIG_UNROLL
      for (int lane = 0; lane < kLanes; ++lane) {
        if ((bits >> (v * kLanes + lane)) & 1) {
          if (rank < args.values_count) args.values[rank] = vector.lane[lane];
          ++rank;
        }
      }
    }
    return;
  }
  // Bits outside the shard are clear, so walking the set bits visits only its kept elements.
  while (bits != 0) {
    const int e = popcount64((bits & (~bits + 1)) - 1);  // index of the lowest set bit
    bits &= bits - 1;
    if (rank < args.values_count) {
      args.values[rank] = args.full[begin + e - layout.element_offset];
    }
    ++rank;
  }
}

template <typename Bits>
TINYBIG_HOST_DEVICE void expand_thread(const CompactLayout& layout, const ExpandArgs<Bits>& args,
                                       uint64_t thread, uint64_t thread_count) {
  const uint64_t chunks = chunk_count(layout);
  for (uint64_t c = thread; c < chunks; c += thread_count) expand_chunk(layout, args, c);
}

template <typename Bits>
TINYBIG_HOST_DEVICE void compress_thread(const CompactLayout& layout, const CompressArgs<Bits>& args,
                                         uint64_t thread, uint64_t thread_count) {
  const uint64_t chunks = chunk_count(layout);
  for (uint64_t c = thread; c < chunks; c += thread_count) compress_chunk(layout, args, c);
}

}  // namespace tinybig_cuda
