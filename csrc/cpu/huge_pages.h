#pragma once

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tinybig_cuda {

// Large new CPU outputs: a tensor larger than glibc's mmap threshold arrives as untouched pages, and faulting them
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
