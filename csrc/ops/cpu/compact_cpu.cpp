// CPU kernels of the compact ops. A mask is cut into chunks of kChunkElements; each chunk's first
// rank (how many kept elements precede it) lets every chunk be scattered (expand) or gathered
// (compress) in parallel, each from its own rank, in one pass that generates the mask once.
//
// The first ranks are a pure function of (seed, offset, p, element_offset, numel): they are
// counted once, in a counting pass, and kept in a small cache keyed on those values (never on a
// tensor's address or version), so every later call on the same mask -- a training loop's
// forward and backward -- is that single pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "core/cpu/compact_ranges.h"
#include "ops/mask_key.h"
#include "ops/compact.h"
#include "core/mask_cache.h"

namespace tinybig_cuda {
namespace {

// Elements per chunk: enough work (tens of microseconds) to amortise handing it to a thread, and
// few enough chunks that their serial prefix sum and their cached ranks cost nothing (2 KiB for
// 4096x4096).
constexpr int64_t kChunkElements = 1 << 16;
// Ranks of masks of up to 2**36 elements (8 MiB of ranks) are cached, at most 64 masks and 16 MiB.
constexpr size_t kMaxCachedMasks = 64;
constexpr size_t kMaxCachedRankBytes = size_t{16} << 20;
constexpr int64_t kMaxCachedChunks = int64_t{1} << 20;
// Above this many elements (about 10 ms of counting), a wrong claimed count is refused as soon as
// the partial count proves it wrong; below, the count is finished so the message can give it.
constexpr int64_t kStopEarlyElements = int64_t{1} << 24;

int64_t chunk_count(int64_t numel) { return numel / kChunkElements + (numel % kChunkElements != 0); }

int64_t chunk_end(int64_t chunk, int64_t numel) {
  return chunk < numel / kChunkElements ? (chunk + 1) * kChunkElements : numel;
}

// first_rank[c] is the rank of chunk c's first kept element; first_rank.back() is the total.
using FirstRanks = std::shared_ptr<const std::vector<int64_t>>;

MaskCache<FirstRanks>& first_ranks_cache() {
  return MaskCache<FirstRanks>::instance(kMaxCachedMasks, kMaxCachedRankBytes);
}

// The first ranks of every chunk, from the cache or counted in parallel. `claimed` >= 0 is the
// count the caller's tensor implies: counting a large mask stops as soon as the partial counts
// prove the total is not `claimed`, and *kept then holds the bounds proven (the ranks are null).
FirstRanks chunk_first_ranks(CpuIsa isa, int64_t numel, uint64_t element_offset, const MaskKey& key,
                             int64_t claimed, KeptCount* kept) {
  const MaskIdentity mask{key, element_offset, numel};
  if (std::optional<FirstRanks> cached = first_ranks_cache().find(mask)) {
    *kept = KeptCount::exactly((*cached)->back());
    return *cached;
  }
  const int64_t chunks = chunk_count(numel);
  auto first_rank = std::make_shared<std::vector<int64_t>>(chunks + 1, 0);
  const bool may_stop_early = claimed >= 0 && numel > kStopEarlyElements;
  // A lower bound of the total (the counted chunks' kept elements) and the elements not yet
  // counted. Each chunk adds its count before it subtracts its length, and `left` is read before
  // `counted_kept`, so counted_kept + left never falls below the total.
  std::atomic<int64_t> counted_kept{0}, left{numel};
  std::atomic<bool> stopped{false};
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end && !stopped.load(std::memory_order_relaxed); ++c) {
      const int64_t count = count_kept_range(isa, c * kChunkElements, chunk_end(c, numel), element_offset, key);
      (*first_rank)[c + 1] = count;
      if (!may_stop_early) continue;
      counted_kept += count;
      left -= chunk_end(c, numel) - c * kChunkElements;
      const int64_t uncounted = left.load();
      const int64_t at_least = counted_kept.load();
      if (at_least > claimed || at_least + uncounted < claimed) stopped = true;
    }
  });
  if (stopped) {
    const int64_t uncounted = left.load();
    const int64_t at_least = counted_kept.load();
    *kept = KeptCount{at_least, at_least + uncounted};
    return nullptr;
  }
  for (int64_t c = 0; c < chunks; ++c) (*first_rank)[c + 1] += (*first_rank)[c];
  *kept = KeptCount::exactly(first_rank->back());
  if (chunks <= kMaxCachedChunks) first_ranks_cache().insert(mask, first_rank, first_rank->size() * sizeof(int64_t));
  return first_rank;
}

// The count alone, for masks too large to cache ranks for: no memory per chunk.
int64_t count_kept_uncached(CpuIsa isa, int64_t numel, uint64_t element_offset, const MaskKey& key) {
  return at::parallel_reduce(
      0, chunk_count(numel), 1, int64_t{0},
      [&](int64_t begin, int64_t end, int64_t sum) {
        for (int64_t c = begin; c < end; ++c) {
          sum += count_kept_range(isa, c * kChunkElements, chunk_end(c, numel), element_offset, key);
        }
        return sum;
      },
      [](int64_t a, int64_t b) { return a + b; });
}

void count_cpu(int64_t numel, double p, const at::Tensor& rng_state, uint64_t element_offset,
               at::Tensor& count) {
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  KeptCount kept{0, 0};
  if (chunk_count(numel) <= kMaxCachedChunks) {
    chunk_first_ranks(isa, numel, element_offset, key, /*claimed=*/-1, &kept);
  } else {
    kept = KeptCount::exactly(count_kept_uncached(isa, numel, element_offset, key));
  }
  *count.mutable_data_ptr<int64_t>() = kept.at_least;
}

void expand_cpu(const at::Tensor& values, at::Tensor& full, double p, const at::Tensor& rng_state,
                uint64_t element_offset) {
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const int64_t numel = full.numel();
  KeptCount kept{0, 0};
  const FirstRanks first_rank = chunk_first_ranks(isa, numel, element_offset, key, values.numel(), &kept);
  check_values_match_mask(values, kept, full.sizes());

  const at::Tensor compact = values.contiguous();
  const void* in = compact.const_data_ptr();
  void* out = full.mutable_data_ptr();
  const int element_size = static_cast<int>(values.element_size());
  at::parallel_for(0, chunk_count(numel), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      expand_range(isa, in, compact.numel(), out, element_size, c * kChunkElements,
                   chunk_end(c, numel), (*first_rank)[c], element_offset, key);
    }
  });
}

void compress_cpu(const at::Tensor& full, at::Tensor& values, double p, const at::Tensor& rng_state,
                  uint64_t element_offset) {
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const int64_t numel = full.numel();
  const int64_t kept_count = values.numel();
  KeptCount kept{0, 0};
  const FirstRanks first_rank = chunk_first_ranks(isa, numel, element_offset, key, kept_count, &kept);
  check_kept_count_matches_mask(kept_count, kept, full);

  const at::Tensor source = full.contiguous();  // element k of the flat source is logical element k
  const void* in = source.const_data_ptr();
  void* out = values.mutable_data_ptr();
  const int element_size = static_cast<int>(full.element_size());
  at::parallel_for(0, chunk_count(numel), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      compress_range(isa, in, out, (*first_rank)[c + 1], element_size, c * kChunkElements,
                     chunk_end(c, numel), (*first_rank)[c], element_offset, key);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) { register_compact_ops(m, {count_cpu, expand_cpu, compress_cpu}); }

}  // namespace tinybig_cuda
