#include "core/mask_cache.h"

#include <mutex>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace tinybig_cuda {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<void (*)()> clears;
};

Registry& registry() {
  static Registry* const registry = new Registry();  // leaked, as the caches are
#if defined(__linux__)
  // As each cache's own lock: held across fork() so that both processes start with it free.
  static const bool fork_safe = [] {
    return pthread_atfork([] { registry->mutex.lock(); }, [] { registry->mutex.unlock(); },
                          [] { registry->mutex.unlock(); }) == 0;
  }();
  (void)fork_safe;
#endif
  return *registry;
}

}  // namespace

void register_mask_cache(void (*clear)()) {
  Registry& all = registry();
  std::lock_guard<std::mutex> lock(all.mutex);
  all.clears.push_back(clear);
}

void clear_mask_caches() {
  std::vector<void (*)()> clears;
  {
    // Copied, so that the registry's lock is never held with a cache's (nor across fork()
    // handlers, which take those in another order).
    Registry& all = registry();
    std::lock_guard<std::mutex> lock(all.mutex);
    clears = all.clears;
  }
  for (void (*clear)() : clears) clear();
}

}  // namespace tinybig_cuda
