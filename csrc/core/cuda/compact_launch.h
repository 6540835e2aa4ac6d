// The CUDA launchers of the compact ops, declared without torch so compact.cu compiles against
// cudart alone. The caller allocates the scratch (compact_scratch_words() int64 words on the
// device) and checks the status each returns.
//
// A mask is ranked once (count, then ranks) into a scratch; expand and compress then read that
// scratch, and may do so any number of times, on any stream, as long as it lives.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/philox_mask.h"

namespace tinybig_cuda {

// Scratch the kernels need for a shard of numel > 0 elements at element_offset: 64 keep bits and
// one count per 64-element chunk and one sum per scan segment (1/16 of a float32 matrix's bytes),
// plus one last word the caller may use for the total.
int64_t compact_scratch_words(int64_t numel, uint64_t element_offset);

// Kernels 1-3 of compact_body.h: counts the kept elements into *total (device memory), and
// leaves the chunk counts and segment offsets in `scratch` for launch_compact_ranks_cuda.
cudaError_t launch_compact_count_cuda(int64_t numel, uint64_t element_offset, MaskKeySource key_source,
                                      int64_t* scratch, int64_t* total, int device,
                                      cudaStream_t stream);

// Kernel 4, once, after launch_compact_count_cuda on the same scratch: the chunk counts become
// the chunks' first ranks. The scratch then holds a ranked mask.
cudaError_t launch_compact_ranks_cuda(int64_t numel, uint64_t element_offset, int64_t* scratch,
                                      int device, cudaStream_t stream);

// Kernel 5 on a ranked mask's scratch: full[k] = the next of values[0 .. values_count) where
// element k is kept, zero bits elsewhere.
cudaError_t launch_compact_expand_cuda(const void* values, int64_t values_count, void* full,
                                       int element_size, int64_t numel, uint64_t element_offset,
                                       const int64_t* scratch, int device, cudaStream_t stream);

// Kernel 5 on a ranked mask's scratch: values[0 .. values_count) = the kept elements of full, in
// order.
cudaError_t launch_compact_compress_cuda(const void* full, void* values, int64_t values_count,
                                         int element_size, int64_t numel, uint64_t element_offset,
                                         const int64_t* scratch, int device, cudaStream_t stream);

}  // namespace tinybig_cuda
