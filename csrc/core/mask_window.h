// Where a tensor's elements sit in the mask stream of a larger matrix: the geometry of a shard.
//
// A shard of rows is one run of consecutive global indices, but a shard of columns (a tensor-
// parallel weight) is a window: each of its rows starts a whole row of the full matrix after the
// previous one. Both are described by one rule, so whole tensors and shards share one code path.
//
// Plain C++ that also compiles as CUDA host+device code (the CUDA kernel's per-thread body uses it).
#pragma once

#include <cstdint>

#include "core/philox_mask.h"

namespace tinybig_cuda {

// Local element k (row-major) of a tensor seen as rows of `width` elements is global element
//     offset + (k / width) * row_length + k % width.
// make_mask_window folds rows that follow one another (row_length == width) into one row of the
// whole tensor, so a whole tensor or a shard of rows is always a single run.
struct MaskWindow {
  uint64_t offset;      // the global index of local element 0
  int64_t width;        // > 0: elements per row of the window
  uint64_t row_length;  // >= width: global distance between the starts of consecutive rows
};

inline MaskWindow make_mask_window(uint64_t offset, int64_t numel, int64_t width,
                                   uint64_t row_length) {
  if (width <= 0 || row_length == static_cast<uint64_t>(width) || numel <= width) {
    return MaskWindow{offset, numel > 0 ? numel : 1, static_cast<uint64_t>(numel > 0 ? numel : 1)};
  }
  return MaskWindow{offset, width, row_length};
}

TINYBIG_HOST_DEVICE uint64_t global_index(const MaskWindow& window, int64_t local) {
  const uint64_t row = static_cast<uint64_t>(local / window.width);
  return window.offset + row * window.row_length + static_cast<uint64_t>(local % window.width);
}

// Calls run(local_begin, count, global_begin) for each piece of local elements [begin, end) whose
// global indices are consecutive: one call for a single-row window, one per row piece otherwise.
template <typename Run>
inline void for_each_run(const MaskWindow& window, int64_t begin, int64_t end, Run&& run) {
  while (begin < end) {
    const int64_t count_to_row_end = window.width - begin % window.width;
    const int64_t count = end - begin < count_to_row_end ? end - begin : count_to_row_end;
    run(begin, count, global_index(window, begin));
    begin += count;
  }
}

}  // namespace tinybig_cuda
