// The CUDA kernel's per-thread work as a host+device function, so the C++ tests can run every
// thread of a simulated launch on the host and compare its bits with the CPU path.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/mask_window.h"
#include "core/philox_mask.h"

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
  const Bits* input;   // local element k is global element global_index(window, k)
  Bits* output;        // likewise, contiguous
  int64_t numel;       // > 0
  MaskWindow window;   // from make_mask_window: a whole tensor is one row
  bool vectorized;     // every group starts 16-byte aligned in both buffers
};

// One row of the window: `count` elements, consecutive in memory and in the mask stream.
struct MaskedRow {
  uint64_t local;  // the local index of the row's first element
  int64_t count;
  uint64_t first;  // its global index
};

// Groups are aligned to global element indices, so a view that starts mid-vector still gets
// vector loads wherever input and output agree on alignment. Every row shifts its memory against
// its global indices by the same (row_length - width) elements more than the row before.
template <typename Bits>
inline bool groups_are_aligned(const void* input, const void* output, const MaskWindow& window,
                               int64_t numel) {
  const uint64_t shift = window.offset * sizeof(Bits);
  const bool rows_keep_alignment =
      numel <= window.width ||
      (window.row_length - static_cast<uint64_t>(window.width)) * sizeof(Bits) % kVectorBytes == 0;
  return rows_keep_alignment && (reinterpret_cast<uintptr_t>(input) - shift) % kVectorBytes == 0 &&
         (reinterpret_cast<uintptr_t>(output) - shift) % kVectorBytes == 0;
}

// The groups a row touches: from the one holding its first element to the one holding its last.
template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t first_group(const MaskedRow& row) {
  return row.first / group_elements<Bits>();
}

template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t last_group(const MaskedRow& row) {
  return (row.first + row.count - 1) / group_elements<Bits>();
}

// Group slots per row: enough for any row of the window, wherever it starts.
template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t slots_per_row(const MaskedCopyArgs<Bits>& args) {
  return (static_cast<uint64_t>(args.window.width) + group_elements<Bits>() - 1) / group_elements<Bits>() + 1;
}

// The threads a launch needs: one per group slot of every row.
template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t slot_count(const MaskedCopyArgs<Bits>& args) {
  return static_cast<uint64_t>(args.numel / args.window.width) * slots_per_row(args);
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
  // One 16-byte store, spelled out: written as a Vector (or uint4) assignment, the compiler split
  // it into 4-byte stores in kernels whose rows start at row_index * width (tests/test_cuda.py).
  uint4 bits;
  memcpy(&bits, &vector, sizeof(bits));
  asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(target)),
      "r"(bits.x), "r"(bits.y), "r"(bits.z), "r"(bits.w)
      : "memory");
#else
  std::memcpy(target, &vector, sizeof(vector));
#endif
}

// Masks one group that lies wholly inside its row, in aligned buffers: 16-byte loads and stores.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_vectors(const Bits* input, Bits* output, const MaskKey& key,
                                             uint64_t group) {
  constexpr int kElements = group_elements<Bits>();
  constexpr int kLanes = kVectorBytes / sizeof(Bits);
  Vector<Bits> vectors[kElements / kLanes];
TINYBIG_UNROLL
  for (int v = 0; v < kElements / kLanes; ++v) vectors[v] = load_vector(input + v * kLanes);
TINYBIG_UNROLL
  for (int block = 0; block < kElements / kWordsPerBlock; ++block) {
    const PhiloxWords words = mask_block_words(group * (kElements / kWordsPerBlock) + block, key);
TINYBIG_UNROLL
    for (int word = 0; word < kWordsPerBlock; ++word) {
      const int e = block * kWordsPerBlock + word;
      if (!keeps(words.word[word], key.threshold)) vectors[e / kLanes].lane[e % kLanes] = Bits(0);
    }
  }
TINYBIG_UNROLL
  for (int v = 0; v < kElements / kLanes; ++v) store_vector(output + v * kLanes, vectors[v]);
}

// Masks the elements of one group that lie inside its row, one at a time: a row's ends, and
// misaligned views.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_elements(const MaskedCopyArgs<Bits>& args, const MaskedRow& row,
                                              const MaskKey& key, uint64_t group) {
  constexpr int kElements = group_elements<Bits>();
  const uint64_t group_begin = group * kElements;
  const uint64_t row_end = row.first + row.count;
TINYBIG_UNROLL
  for (int block = 0; block < kElements / kWordsPerBlock; ++block) {
    const PhiloxWords words = mask_block_words(group_begin / kWordsPerBlock + block, key);
TINYBIG_UNROLL
    for (int word = 0; word < kWordsPerBlock; ++word) {
      const uint64_t global = group_begin + block * kWordsPerBlock + word;
      if (global >= row.first && global < row_end) {
        const uint64_t local = row.local + (global - row.first);
        args.output[local] = keeps(words.word[word], key.threshold) ? args.input[local] : Bits(0);
      }
    }
  }
}

// Masks one group of a row: with vector loads and stores when it lies wholly inside the row and
// the buffers are aligned, element by element otherwise.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_group(const MaskedCopyArgs<Bits>& args, const MaskedRow& row,
                                           const MaskKey& key, uint64_t group) {
  constexpr int kElements = group_elements<Bits>();
  const uint64_t group_begin = group * kElements;
  if (args.vectorized && group_begin >= row.first && group_begin + kElements <= row.first + row.count) {
    const uint64_t local = row.local + (group_begin - row.first);
    masked_copy_vectors(args.input + local, args.output + local, key, group);
  } else {
    masked_copy_elements(args, row, key, group);
  }
}

// One thread of a launch of thread_count threads: a grid-stride loop over the group slots of
// every row (a whole tensor is one row, so its loop never changes rows). Which thread handles a
// group changes nothing in its bits, so any grid size gives the same output.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_thread(const MaskedCopyArgs<Bits>& args, const MaskKey& key,
                                            uint64_t thread, uint64_t thread_count) {
  const uint64_t per_row = slots_per_row(args);
  const uint64_t slots = slot_count(args);
  const uint64_t width = static_cast<uint64_t>(args.window.width);
  uint64_t row_index = thread / per_row;
  uint64_t slot = thread % per_row;
  for (uint64_t s = thread; s < slots; s += thread_count) {
    const MaskedRow row{row_index * width, args.window.width,
                        args.window.offset + row_index * args.window.row_length};
    const uint64_t group = first_group<Bits>(row) + slot;
    if (group <= last_group<Bits>(row)) masked_copy_group(args, row, key, group);
    slot += thread_count;
    if (slot >= per_row) {  // only a window of several rows gets here before the loop ends
      row_index += slot / per_row;
      slot %= per_row;
    }
  }
}

}  // namespace tinybig_cuda
