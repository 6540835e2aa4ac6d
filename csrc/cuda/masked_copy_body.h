// The CUDA kernel's per-thread work as a host+device function, so the C++ tests can run every
// thread of a simulated launch on the host and compare its bits with the CPU path.
#pragma once

#include <cstdint>
#include <cstring>

#include "../mask_window.h"
#include "../philox_mask.h"

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
template <typename Bits>
struct MaskedRow {
  const Bits* input;
  Bits* output;
  int64_t count;
  uint64_t first;  // the global index of input[0]
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
TINYBIG_HOST_DEVICE uint64_t first_group(const MaskedRow<Bits>& row) {
  return row.first / group_elements<Bits>();
}

template <typename Bits>
TINYBIG_HOST_DEVICE uint64_t last_group(const MaskedRow<Bits>& row) {
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
  *reinterpret_cast<Vector<Bits>*>(target) = vector;  // one 16-byte store
#else
  std::memcpy(target, &vector, sizeof(vector));
#endif
}

// Masks one group of a row: with vector loads and stores when it lies wholly inside the row and
// the buffers are aligned, element by element at the ends and for misaligned views.
template <typename Bits>
TINYBIG_HOST_DEVICE void masked_copy_group(const MaskedRow<Bits>& row, bool vectorized,
                                           const MaskKey& key, uint64_t group) {
  constexpr int kElements = group_elements<Bits>();
  constexpr int kLanes = kVectorBytes / sizeof(Bits);
  const uint64_t group_begin = group * kElements;
  const uint64_t row_end = row.first + row.count;
  Bits values[kElements];
  const bool whole = group_begin >= row.first && group_begin + kElements <= row_end;
  const bool vector_path = whole && vectorized;
  const int64_t first_local = static_cast<int64_t>(group_begin - row.first);

  if (vector_path) {
TINYBIG_UNROLL
    for (int v = 0; v < kElements / kLanes; ++v) {
      const Vector<Bits> vector = load_vector(row.input + first_local + v * kLanes);
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
      } else if (global >= row.first && global < row_end) {
        const int64_t local = first_local + e;
        row.output[local] = keeps(words.word[word], key.threshold) ? row.input[local] : Bits(0);
      }
    }
  }
  if (vector_path) {
TINYBIG_UNROLL
    for (int v = 0; v < kElements / kLanes; ++v) {
      Vector<Bits> vector;
TINYBIG_UNROLL
      for (int lane = 0; lane < kLanes; ++lane) vector.lane[lane] = values[v * kLanes + lane];
      store_vector(row.output + first_local + v * kLanes, vector);
    }
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
    const MaskedRow<Bits> row{args.input + row_index * width, args.output + row_index * width,
                              args.window.width,
                              args.window.offset + row_index * args.window.row_length};
    const uint64_t group = first_group(row) + slot;
    if (group <= last_group(row)) masked_copy_group(row, args.vectorized, key, group);
    slot += thread_count;
    if (slot >= per_row) {  // only a window of several rows gets here before the loop ends
      row_index += slot / per_row;
      slot %= per_row;
    }
  }
}

}  // namespace tinybig_cuda
