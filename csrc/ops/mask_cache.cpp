#include "ops/mask_cache.h"

#include <mutex>
#include <vector>

namespace tinybig_cuda {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<void (*)()> clears;
};

Registry& registry() {
  static Registry* registry = new Registry();  // leaked, as the caches are
  return *registry;
}

}  // namespace

void register_mask_cache(void (*clear)()) {
  Registry& all = registry();
  std::lock_guard<std::mutex> lock(all.mutex);
  all.clears.push_back(clear);
}

void clear_mask_caches() {
  Registry& all = registry();
  std::lock_guard<std::mutex> lock(all.mutex);
  for (void (*clear)() : all.clears) clear();
}

}  // namespace tinybig_cuda
