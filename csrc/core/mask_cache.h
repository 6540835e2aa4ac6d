// What the compact kernels learn about one mask by counting it -- its kept count and each chunk's
// first rank -- is a pure function of the mask's identity: (seed, offset, p, element_offset,
// numel). MaskCache keeps it under that identity, the state's value and never a tensor's address
// or version counter, so a later call on the same mask (a training loop's forward and backward)
// skips the counting pass, and a state written in any way can never be given a stale answer.
//
// One cache per device kind: the CPU kernels keep their ranks in host memory, the CUDA kernels in
// device memory (with `device` telling GPUs apart).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <utility>

#if defined(__linux__)
#include <pthread.h>
#endif

#include "core/philox_mask.h"

namespace tinybig_cuda {

struct MaskIdentity {
  MaskKey key;
  uint64_t element_offset;
  int64_t numel;
  int device = -1;  // the GPU whose memory holds the cached value; -1 on the CPU

  bool operator==(const MaskIdentity& other) const {
    return key.seed == other.key.seed && key.offset == other.key.offset &&
           key.threshold == other.key.threshold && element_offset == other.element_offset &&
           numel == other.numel && device == other.device;
  }
};

// Empties every MaskCache made so far: the compact ops forget every mask they counted (and free
// the GPU memory of its ranks). tinybig_cuda.empty_compact_cache() calls it.
void clear_mask_caches();
// Adds a cache's clear() to those clear_mask_caches() calls; each cache registers itself.
void register_mask_cache(void (*clear)());

// A small least-recently-used map from MaskIdentity to Value (copied out under the lock, so a
// Value is a handle: a shared_ptr or an at::Tensor). Safe to use from several threads at once.
// There is one cache per Value type, made (with the limits of) its first `instance` call and
// leaked: it is used while the process exits.
template <typename Value>
class MaskCache {
 public:
  static MaskCache& instance(size_t max_entries, size_t max_bytes) {
    static MaskCache* const cache = new MaskCache(max_entries, max_bytes);
    // Hooked up once `cache` is set: clear_mask_caches() or a fork in another thread may run the
    // hooks at once.
    static const bool hooked = [] {
      register_mask_cache([] { cache->clear(); });
#if defined(__linux__)
      // Hold the lock across fork() so that both processes start with it free (DataLoader workers).
      pthread_atfork([] { cache->mutex_.lock(); }, [] { cache->mutex_.unlock(); },
                     [] { cache->mutex_.unlock(); });
#endif
      return true;
    }();
    (void)hooked;
    return *cache;
  }

  std::optional<Value> find(const MaskIdentity& mask) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->mask == mask) {
        entries_.splice(entries_.begin(), entries_, it);  // now the most recently used
        return it->value;
      }
    }
    return std::nullopt;
  }

  void clear() {
    std::list<Entry> dropped;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    dropped.swap(entries_);
    bytes_ = 0;
  }

  // `bytes`: what the value holds, counted against max_bytes. Values larger than max_bytes are not
  // kept; older entries are dropped to make room.
  void insert(const MaskIdentity& mask, Value value, size_t bytes) {
    if (bytes > max_bytes_) return;
    std::list<Entry> dropped;  // destroyed after the lock is released (a tensor's memory, say)
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& entry : entries_) {
      if (entry.mask == mask) return;  // counted by two threads at once
    }
    entries_.push_front(Entry{mask, std::move(value), bytes});
    bytes_ += bytes;
    while (entries_.size() > max_entries_ || bytes_ > max_bytes_) {
      bytes_ -= entries_.back().bytes;
      dropped.splice(dropped.begin(), entries_, std::prev(entries_.end()));
    }
  }

 private:
  struct Entry {
    MaskIdentity mask;
    Value value;
    size_t bytes;
  };

  MaskCache(size_t max_entries, size_t max_bytes) : max_entries_(max_entries), max_bytes_(max_bytes) {}

  const size_t max_entries_;
  const size_t max_bytes_;
  std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  size_t bytes_ = 0;
};

}  // namespace tinybig_cuda
