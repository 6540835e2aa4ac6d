#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <iterator>
#include <mutex>
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

// A block of c10::alloc_cpu (torch's CPU memory, unprofiled: this cache reports to the profiler
// itself), sized in whole huge pages. It is the context of the DataPtr handed out for it, so that
// freeing the tensor passes the block back to the cache.
struct Block {
  void* data;
  size_t bytes;
};

void free_block(Block* block) {
  c10::free_cpu(block->data);
  delete block;
}

// Free blocks, matched to requests by exact (rounded) size: a model asks for the same few sizes
// on every step. Blocks are kept oldest first, and the oldest are freed when the limit is reached.
class OutputCache final : public c10::Allocator {
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

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < static_cast<size_t>(kMinCachedOutputBytes)) {
      return c10::GetCPUAllocator()->allocate(bytes);
    }
    const size_t rounded = (bytes + kHugePage - 1) & ~(kHugePage - 1);
    Block* block = take(rounded);
    if (block == nullptr) {
      block = new Block{c10::alloc_cpu(rounded), rounded};
      advise_huge_pages(block->data, rounded);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ += static_cast<int64_t>(rounded);
      report_to_profiler(*block, static_cast<int64_t>(rounded));
    }
    return {block->data, block, &give_back, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
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
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evicted = evict_until(bytes);
    }
    for (Block* block : evicted) free_block(block);  // unmapping outside the lock
  }

 private:
  static void give_back(void* context) {
    OutputCache& cache = instance();
    Block* block = static_cast<Block*>(context);
    const int64_t bytes = static_cast<int64_t>(block->bytes);
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(cache.mutex_);
      cache.in_use_bytes_ -= bytes;
      cache.report_to_profiler(*block, -bytes);
      if (bytes <= cache.limit_) {
        evicted = cache.evict_until(cache.limit_ - bytes);
        cache.free_blocks_.push_back(block);
        cache.cached_bytes_ += bytes;
        block = nullptr;
      }
    }
    for (Block* old : evicted) free_block(old);
    if (block != nullptr) free_block(block);  // larger than the limit
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

  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Newest first: its pages are the likeliest to still be in cache and TLB.
    for (auto it = free_blocks_.rbegin(); it != free_blocks_.rend(); ++it) {
      if ((*it)->bytes == bytes) {
        Block* block = *it;
        free_blocks_.erase(std::next(it).base());
        cached_bytes_ -= static_cast<int64_t>(bytes);
        ++hits_;
        return block;
      }
    }
    ++misses_;
    return nullptr;
  }

  // Removes the oldest blocks until at most `budget` bytes stay cached; the caller frees them.
  std::vector<Block*> evict_until(int64_t budget) {
    size_t oldest = 0;
    while (oldest < free_blocks_.size() && cached_bytes_ > budget) {
      cached_bytes_ -= static_cast<int64_t>(free_blocks_[oldest]->bytes);
      ++oldest;
    }
    std::vector<Block*> evicted(free_blocks_.begin(), free_blocks_.begin() + oldest);
    free_blocks_.erase(free_blocks_.begin(), free_blocks_.begin() + oldest);
    return evicted;
  }

  std::mutex mutex_;
  std::vector<Block*> free_blocks_;  // oldest first
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
