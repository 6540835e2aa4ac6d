#include "ops/output_memory.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include "ops/torch_compat.h"

#include <iterator>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace tinybig_cuda {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

// Asks for transparent huge pages, so the block faults in 2 MiB at a time instead of 4 KiB (32
// faults for 64 MiB instead of 16384): what torch's THP_MEM_ALLOC_ENABLE=1 does for every
// allocation. Only a hint: where it is refused, nothing changes but the speed.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t address = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (address + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (address + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// A block of memory the cache can really hand back to the OS: on Linux its own mapping, aligned to
// a huge page. (Not glibc's heap: once a freed block has raised glibc's mmap threshold, it serves
// blocks of up to 32 MiB from its heap and keeps them when they are freed.) Elsewhere,
// c10::alloc_cpu. Either way the memory is unprofiled: this cache reports to the profiler itself.
struct Block {
  void* data;
  size_t bytes;  // whole huge pages
};

Block allocate_block(size_t bytes) {
#if defined(__linux__)
  // Mapped one huge page larger, so that an aligned block fits; the rest is unmapped at once.
  void* mapping = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK_WITH(OutOfMemoryError, mapping != MAP_FAILED,
                   "tinybig_cuda CPU output cache: not enough memory: you tried to allocate ", bytes, " bytes.");
  const uintptr_t begin = reinterpret_cast<uintptr_t>(mapping);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const size_t lead = aligned - begin;  // page-aligned, less than a huge page
  if (lead > 0) munmap(mapping, lead);
  munmap(reinterpret_cast<void*>(aligned + bytes), kHugePage - lead);
  Block block{reinterpret_cast<void*>(aligned), bytes};
#else
  Block block{c10::alloc_cpu(bytes), bytes};
#endif
  advise_huge_pages(block.data, block.bytes);
  return block;
}

void free_block(const Block& block) {
#if defined(__linux__)
  munmap(block.data, block.bytes);
#else
  c10::free_cpu(block.data);
#endif
}

// Free blocks, matched to requests by exact (rounded) size: a model asks for the same few sizes
// on every step. Blocks are kept oldest first, and the oldest are freed when the limit is reached.
// A handed-out DataPtr's context is its data address, as for torch's own CPU tensors
// (copy-on-write clones need that); the cache finds the block's size from the address.
class OutputCache final : public AllocatorBase {
 public:
  OutputCache() {
#if defined(__linux__)
    // A child forked while another thread held the lock would wait on it forever: hold it across
    // fork() so that both processes start with it free (DataLoader workers fork).
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }

  // Leaked on purpose: tensors freed while the process exits still give their blocks back here.
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  c10::DataPtr allocate_memory(size_t bytes) override {
    if (bytes < static_cast<size_t>(kMinCachedOutputBytes)) {
      return c10::GetCPUAllocator()->allocate(bytes);
    }
    const size_t rounded = (bytes + kHugePage - 1) & ~(kHugePage - 1);
    Block block{nullptr, rounded};
    if (!take(&block)) block = allocate_block(rounded);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_.emplace(block.data, block.bytes);
      in_use_bytes_ += static_cast<int64_t>(rounded);
      report_to_profiler(block, static_cast<int64_t>(rounded));
    }
    return {block.data, block.data, &give_back, c10::Device(c10::kCPU)};
  }

  OutputCacheInfo info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {limit_, cached_bytes_, static_cast<int64_t>(free_blocks_.size()), hits_, misses_};
  }

  void set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
  }

  // Frees the least recently cached blocks until at most `bytes` remain cached.
  void trim_to(int64_t bytes) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evicted = evict_until(bytes);
    }
    for (const Block& block : evicted) free_block(block);  // unmapping outside the lock
  }

 private:
  static void give_back(void* data) {
    OutputCache& cache = instance();
    std::vector<Block> evicted;
    bool cached = false;
    Block block{data, 0};
    {
      std::lock_guard<std::mutex> lock(cache.mutex_);
      const auto it = cache.in_use_.find(data);
      block.bytes = it->second;
      cache.in_use_.erase(it);
      const int64_t bytes = static_cast<int64_t>(block.bytes);
      cache.in_use_bytes_ -= bytes;
      cache.report_to_profiler(block, -bytes);
      cached = bytes <= cache.limit_;
      if (cached) {
        evicted = cache.evict_until(cache.limit_ - bytes);
        cache.free_blocks_.push_back(block);
        cache.cached_bytes_ += bytes;
      }
    }
    for (const Block& old : evicted) free_block(old);
    if (!cached) free_block(block);  // larger than the limit
  }

  // What the profiler's memory view shows, as for PyTorch's CUDA caching allocator: a block is
  // allocated while a tensor uses it, and reserved while it is in use or cached. Lock held.
  void report_to_profiler(const Block& block, int64_t signed_bytes) const {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(block.data, signed_bytes, static_cast<size_t>(in_use_bytes_),
                                       static_cast<size_t>(in_use_bytes_ + cached_bytes_),
                                       c10::Device(c10::kCPU));
    }
  }

  // Takes a cached block of block->bytes into *block, or returns false.
  bool take(Block* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Newest first: its pages are the likeliest to still be in cache and TLB.
    for (auto it = free_blocks_.rbegin(); it != free_blocks_.rend(); ++it) {
      if (it->bytes == block->bytes) {
        *block = *it;
        free_blocks_.erase(std::next(it).base());
        cached_bytes_ -= static_cast<int64_t>(block->bytes);
        ++hits_;
        return true;
      }
    }
    ++misses_;
    return false;
  }

  // Removes the oldest blocks until at most `budget` bytes stay cached; the caller frees them.
  std::vector<Block> evict_until(int64_t budget) {
    size_t oldest = 0;
    while (oldest < free_blocks_.size() && cached_bytes_ > budget) {
      cached_bytes_ -= static_cast<int64_t>(free_blocks_[oldest].bytes);
      ++oldest;
    }
    std::vector<Block> evicted(free_blocks_.begin(), free_blocks_.begin() + oldest);
    free_blocks_.erase(free_blocks_.begin(), free_blocks_.begin() + oldest);
    return evicted;
  }

  std::mutex mutex_;
  std::vector<Block> free_blocks_;  // oldest first
  std::unordered_map<void*, size_t> in_use_;  // data -> bytes of the blocks tensors use
  int64_t limit_ = kDefaultOutputCacheLimitBytes;
  int64_t cached_bytes_ = 0;
  int64_t in_use_bytes_ = 0;  // in blocks that tensors use
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &OutputCache::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

OutputCacheInfo output_cache_info() { return OutputCache::instance().info(); }

void set_output_cache_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "set_cpu_output_cache_limit: expected limit_bytes >= 0, but got ", bytes);
  OutputCache::instance().set_limit(bytes);
  OutputCache::instance().trim_to(bytes);
}

void empty_output_cache() { OutputCache::instance().trim_to(0); }

}  // namespace tinybig_cuda
