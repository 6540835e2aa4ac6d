// The cache of counted masks (csrc/core/mask_cache.h) that the compact kernels share: a mask is
// found only under its whole identity, the least recently used masks go first, the limits hold,
// and clear_mask_caches() empties every cache and frees what it held.
#include <memory>
#include <thread>
#include <vector>

#include "check.h"
#include "core/mask_cache.h"

using namespace tinybig_cuda;

namespace {

// One cache per Value type: a tag per test gives each its own limits.
template <int Tag>
struct Held {
  std::shared_ptr<int> value;
};

MaskIdentity mask(uint64_t seed) { return MaskIdentity{MaskKey{seed, 2, 3}, 4, 5, -1}; }

template <int Tag>
bool holds(MaskCache<Held<Tag>>& cache, const MaskIdentity& identity, int value) {
  const std::optional<Held<Tag>> found = cache.find(identity);
  return found.has_value() && *found->value == value;
}

void check_identity() {
  auto& cache = MaskCache<Held<0>>::instance(16, 1 << 20);
  const MaskIdentity base = mask(1);
  cache.insert(base, {std::make_shared<int>(7)}, 8);
  CHECK(holds(cache, base, 7), "the mask itself");
  MaskIdentity others[6] = {base, base, base, base, base, base};
  others[0].key.seed += 1;
  others[1].key.offset += 1;
  others[2].key.threshold += 1;
  others[3].element_offset += 1;
  others[4].numel += 1;
  others[5].device = 0;
  for (const MaskIdentity& other : others) CHECK(!cache.find(other).has_value(), "a mask differing in one input");
}

void check_least_recently_used_go_first() {
  auto& cache = MaskCache<Held<1>>::instance(/*max_entries=*/3, /*max_bytes=*/100);
  for (int i = 1; i <= 3; ++i) cache.insert(mask(i), {std::make_shared<int>(i)}, 10);
  CHECK(holds(cache, mask(1), 1), "first mask");  // now the most recently used
  cache.insert(mask(4), {std::make_shared<int>(4)}, 10);
  CHECK(!cache.find(mask(2)).has_value(), "the least recently used mask is dropped");
  CHECK(holds(cache, mask(1), 1) && holds(cache, mask(3), 3) && holds(cache, mask(4), 4), "the others stay");
  cache.insert(mask(4), {std::make_shared<int>(40)}, 10);
  CHECK(holds(cache, mask(4), 4), "a second insert of a mask keeps the first value");
}

void check_byte_limit_and_clear() {
  auto& cache = MaskCache<Held<2>>::instance(/*max_entries=*/10, /*max_bytes=*/100);
  auto big = std::make_shared<int>(1);
  const std::weak_ptr<int> big_alive = big;
  cache.insert(mask(1), {std::move(big)}, 60);
  cache.insert(mask(2), {std::make_shared<int>(2)}, 50);  // 110 bytes: the older one goes
  CHECK(!cache.find(mask(1)).has_value() && big_alive.expired(), "dropped for bytes, and freed");
  cache.insert(mask(3), {std::make_shared<int>(3)}, 101);
  CHECK(!cache.find(mask(3)).has_value() && holds(cache, mask(2), 2), "a value over the limit is not kept");
  auto kept = std::make_shared<int>(5);
  const std::weak_ptr<int> kept_alive = kept;
  cache.insert(mask(5), {std::move(kept)}, 10);
  clear_mask_caches();
  CHECK(!cache.find(mask(2)).has_value() && !cache.find(mask(5)).has_value() && kept_alive.expired(),
        "clear_mask_caches empties the cache and frees its values");
  CHECK(!MaskCache<Held<1>>::instance(0, 0).find(mask(1)).has_value(), "and every other cache");
}

void check_threads() {
  auto& cache = MaskCache<Held<3>>::instance(/*max_entries=*/8, /*max_bytes=*/1 << 20);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 2000; ++i) {
        const int id = (i * 7 + t) % 16;
        if (const std::optional<Held<3>> found = cache.find(mask(id))) {
          CHECK(*found->value == id, "thread %d: mask %d holds %d", t, id, *found->value);
        } else {
          cache.insert(mask(id), {std::make_shared<int>(id)}, 16);
        }
        if (i % 500 == 0 && t == 0) clear_mask_caches();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
}

}  // namespace

int main() {
  check_identity();
  check_least_recently_used_go_first();
  check_byte_limit_and_clear();
  check_threads();
  return test::finish("mask_cache");
}
