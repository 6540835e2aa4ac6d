// The CPU halves of the compact ops (count, expand, compress), free of torch so the C++ tests can
// run them for every instruction-set path. The CPU kernels (ops/cpu/compact_cpu.cpp) split a
// tensor into chunks, count each chunk, prefix-sum the counts into each chunk's first rank, and
// then run expand or compress on every chunk in parallel.
//
// Element k of a range is global element element_offset + k of the mask (docs/contract.md,
// 'Element offsets and shards'); the rank of a kept element is how many kept elements precede it
// in the whole tensor, which is its index in the compact values.
#pragma once

#include <cstdint>

#include "core/cpu/isa.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {

// How many of elements [begin, end) the mask keeps.
int64_t count_kept_range(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset,
                         const MaskKey& key);

// For k in [begin, end): output[k] = values[rank] where element k is kept, rank counting up from
// first_rank, and zero bits where it is dropped. Never reads values[values_count] or beyond: a
// kept element whose rank is past the end gets zero bits.
void expand_range(CpuIsa isa, const void* values, int64_t values_count, void* output,
                  int element_size, int64_t begin, int64_t end, int64_t first_rank,
                  uint64_t element_offset, const MaskKey& key);

// For k in [begin, end) kept: values[rank] = full[k], rank counting up from first_rank. Writes
// only ranks in [first_rank, values_count), and may write any of them: ranges written in parallel
// must each pass the rank after their own last kept element as values_count.
void compress_range(CpuIsa isa, const void* full, void* values, int64_t values_count,
                    int element_size, int64_t begin, int64_t end, int64_t first_rank,
                    uint64_t element_offset, const MaskKey& key);

}  // namespace tinybig_cuda
