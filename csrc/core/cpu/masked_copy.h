// The CPU masked copy, free of torch so the C++ tests can run every instruction-set path.
#pragma once

#include <cstdint>

#include "core/cpu/isa.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {

// For k in [begin, end): output[k] = input[k] if global element element_offset + k is kept, else
// zero bits. The copy moves bit patterns, so element_size (1, 2, 4 or 8 bytes) is all it needs
// to know of the dtype: zero bits are +0.0 in every floating format, and false for bool. input and
// output may be the same buffer (the mask applied in place); otherwise they must not overlap.
void masked_copy_range(CpuIsa isa, const void* input, void* output, int element_size,
                       int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key);

}  // namespace tinybig_cuda
