// The CUDA kernel's per-thread work as a host+device function, so the C++ tests can run every
// thread of a simulated launch on the host and compare its bits with the CPU path.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox_mask.h"

namespace tinybig_cuda {

// 16 bytes is the widest global load or store one CUDA thread can issue.
constexpr int kVectorBytes = 16;

// A thread handles one group of elements at a time: whole Philox blocks (4 elements) that also
// fill whole 16-byte vectors: 4 floats or doubles, 8 halves, 16 bools.
template <typename Bits>
constexpr int group_elements() {
  return kVectorBytes / sizeof(Bits) > kWordsPerBlock ? kVectorBytes / sizeof(Bits) : kWordsPerBlock;
}

template <typename Bits>
struct alignas(kVectorBytes) Vector {
  Bits lane[kVectorBytes / sizeof(Bits)];
};

template <typename Bits>
struct MaskedCopyArgs {
  const Bits* input;        // input[k] is global element element_offset + k
  Bits* output;             // likewise, contiguous
  int64_t numel;            // > 0
  uint64_t element_offset;
  bool vectorized;          // every group starts 16-byte aligned in both buffers
};

// Groups are aligned to global element indices, so a view that starts mid-vector still gets
// vector loads wherever input and output agree on alignment.
template <typename Bits>
inline bool groups_are_aligned(const void* input, const void* output, uint64_t element_offset) {
  const uint64_t shift = element_offset * sizeof(Bits);
  return (reinterpret_cast<uintptr_t>(input) - shift) % kVectorBytes == 0 &&
         (reinterpret_cast<uintptr_t>(output) - shift) % kVectorBytes == 0;
}

template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t first_group(const MaskedCopyArgs<Bits>& args) {
  return args.element_offset / group_elements<Bits>();
}

template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t group_count(const MaskedCopyArgs<Bits>& args) {
  const uint64_t last = (args.element_offset + args.numel - 1) / group_elements<Bits>();
  return last - first_group(args) + 1;
}

template <typename Bits>
TINYBIG_HOST_DEVICE Vector<Bits> load_vector(const Bits* source) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const Vector<Bits>*>(source);  // one 16-byte load
#else
  Vector<Bits> vector;
  std::memcpy(&vector, source, sizeof(vector));
  return vector;
#endif
}

template <typename Bits>
TINYBIG_HOST_DEVICE void store_vector(Bits* target, const Vector<Bits>& vector) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<Vector<Bits>*>(target) = vector;  // one 16-byte store
#else
  std::memcpy(target, &vector, sizeof(vector));
#endif
}

// Masks one group: with vector loads and stores when it lies wholly inside the tensor and the
// buffers are aligned, element by element at the ends and for misaligned views.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_group(const MaskedCopyArgs<Bits>& args, const MaskKey& key,
                                           uint64_t group) {
  constexpr int kElements = group_elements<Bits>();
  constexpr int kLanes = kVectorBytes / sizeof(Bits);
  const uint64_t group_begin = group * kElements;
  const uint64_t tensor_end = args.element_offset + args.numel;
  Bits values[kElements];
  const bool whole = group_begin >= args.element_offset && group_begin + kElements <= tensor_end;
  const bool vector_path = whole && args.vectorized;
  const int64_t first_local = static_cast<int64_t>(group_begin - args.element_offset);

  if (vector_path) {
TINYBIG_UNROLL
    for (int v = 0; v < kElements / kLanes; ++v) {
      const Vector<Bits> vector = load_vector(args.input + first_local + v * kLanes);
TINYBIG_UNROLL
      for (int lane = 0; lane < kLanes; ++lane) values[v * kLanes + lane] = vector.lane[lane];
    }
  }
TINYBIG_UNROLL
  for (int block = 0; block < kElements / kWordsPerBlock; ++block) {
    const PhiloxWords words = mask_block_words(group_begin / kWordsPerBlock + block, key);
TINYBIG_UNROLL
    for (int word = 0; word < kWordsPerBlock; ++word) {
      const int e = block * kWordsPerBlock + word;
      const uint64_t global = group_begin + e;
      if (vector_path) {
        if (!keeps(words.word[word], key.threshold)) values[e] = Bits(0);
      } else if (global >= args.element_offset && global < tensor_end) {
        const int64_t local = first_local + e;
        args.output[local] = keeps(words.word[word], key.threshold) ? args.input[local] : Bits(0);
      }
    }
  }
  if (vector_path) {
TINYBIG_UNROLL
    for (int v = 0; v < kElements / kLanes; ++v) {
      Vector<Bits> vector;
TINYBIG_UNROLL
      for (int lane = 0; lane < kLanes; ++lane) vector.lane[lane] = values[v * kLanes + lane];
      store_vector(args.output + first_local + v * kLanes, vector);
    }
  }
}

// One thread of a launch of thread_count threads: a grid-stride loop over groups. Which thread
// handles a group changes nothing in its bits, so any grid size gives the same output.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_thread(const MaskedCopyArgs<Bits>& args, const MaskKey& key,
                                            uint64_t thread, uint64_t thread_count) {
  const uint64_t first = first_group(args);
  const uint64_t groups = group_count(args);
  for (uint64_t g = thread; g < groups; g += thread_count) {
    masked_copy_group(args, key, first + g);
  }
}

}  // namespace tinybig_cuda
