// Host-side helpers shared by the CPU registrations of the masking and compact ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../philox_mask.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tinybig_cuda {

// The mask key of a CPU rng_state ([seed, offset], int64) and keep probability p.
inline MaskKey cpu_mask_key(const at::Tensor& rng_state, double p) {
  const at::Tensor state = rng_state.contiguous();
  const int64_t* words = state.const_data_ptr<int64_t>();
  return MaskKey{static_cast<uint64_t>(words[0]), static_cast<uint64_t>(words[1]),
                 keep_threshold(p)};
}

// A new output larger than glibc's mmap threshold arrives as untouched pages, and faulting them
// in 4 KiB at a time costs several times the kernel itself (16384 faults for 64 MiB). Asking for
// transparent huge pages first makes that 32 faults: what torch's THP_MEM_ALLOC_ENABLE=1 does for
// every allocation. Only a hint: where it is refused, nothing changes but the speed.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  if (bytes < static_cast<int64_t>(4 * kHugePage)) return;
  const uintptr_t address = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (address + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (address + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace tinybig_cuda
