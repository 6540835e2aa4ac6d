// Memory for the ops' outputs, with the CPU's large blocks kept for reuse once they are freed.
//
// Every call of a masking op returns a new tensor. One of 64 MiB is more than glibc keeps in its
// heap, so each call maps fresh pages from the OS and each free unmaps them: the call then pays a
// page fault and the zeroing of every page, which doubled the op's time here (9.0 against 4.6 ms
// at 4096x4096 float32, 2 threads, even with huge pages). Keeping the freed blocks, as PyTorch's
// CUDA caching allocator does for the GPU, lets a steady training loop run without touching the
// OS. The cache is bounded, and can be shrunk or emptied at any time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tinybig_cuda {

// An uninitialised contiguous tensor. A CPU tensor of at least kMinCachedOutputBytes takes its
// memory from the cache and gives it back when its storage is freed; a smaller one takes torch's
// CPU allocator's memory, and a CUDA one comes from at::empty.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Four 2 MiB huge pages. Below this, glibc's heap mostly reuses freed memory by itself.
constexpr int64_t kMinCachedOutputBytes = int64_t{8} << 20;
// Enough for forward and backward of an 8192x8192 float32 matrix.
constexpr int64_t kDefaultOutputCacheLimitBytes = int64_t{1} << 30;

struct OutputCacheInfo {
  int64_t limit_bytes;    // the most the cache keeps; 0 keeps nothing
  int64_t cached_bytes;   // held now, in blocks no tensor uses
  int64_t cached_blocks;
  int64_t hits;           // outputs served from a cached block
  int64_t misses;         // outputs of a cacheable size that needed new memory
};

OutputCacheInfo output_cache_info();
// Caches at most `bytes` from now on, freeing the least recently cached blocks beyond it.
void set_output_cache_limit(int64_t bytes);
// Frees every cached block; blocks in use return to the cache when their tensors are freed.
void empty_output_cache();

}  // namespace tinybig_cuda
