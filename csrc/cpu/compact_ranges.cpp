#include "compact_ranges.h"

#include <algorithm>
#include <stdexcept>

namespace tinybig_cuda {
namespace {

// The mask is made a tile at a time as bytes (1 kept, 0 dropped) by the masked copy of a tile of
// ones, so the count, expand and compress run the same vectorized Philox as bernoulli_mask_apply
// and cannot disagree with it. A tile's bytes stay in L1.
constexpr int64_t kTileElements = 2048;

const uint8_t* ones_tile() {
  struct Ones {
    alignas(64) uint8_t byte[kTileElements];
    Ones() { std::fill(byte, byte + kTileElements, uint8_t{1}); }
  };
  static const Ones ones;
  return ones.byte;
}

// Calls visit(tile_begin, tile_length, keep) for consecutive tiles covering [begin, end).
template <typename Visit>
void for_each_keep_tile(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset,
                        const MaskKey& key, Visit&& visit) {
  alignas(64) uint8_t keep[kTileElements];
  const uint8_t* ones = ones_tile();
  for (int64_t tile = begin; tile < end; tile += kTileElements) {
    const int64_t length = std::min(kTileElements, end - tile);
    masked_copy_range(isa, ones, keep, 1, 0, length, element_offset + static_cast<uint64_t>(tile), key);
    visit(tile, length, keep);
  }
}

int64_t count_bytes(const uint8_t* keep, int64_t length) {
  int64_t count = 0;
  for (int64_t j = 0; j < length; ++j) count += keep[j];  // vectorized by the compiler
  return count;
}

// Both loops are branch-free: a random mask would mispredict half the branches of the obvious
// ones. Keep bytes are 0 or 1, so 0 - keep is all-ones or zero bits.
template <typename Bits>
void expand_typed(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                  int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                  const MaskKey& key) {
  if (values_count == 0) {  // nothing to read: every element is dropped or past the end
    std::fill(output + begin, output + end, Bits(0));
    return;
  }
  const int64_t last = values_count - 1;
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    Bits* out = output + tile;
    for (int64_t j = 0; j < length; ++j) {
      const Bits value = values[rank < last ? rank : last];  // always in bounds
      const Bits use = static_cast<Bits>(keep[j] & static_cast<uint8_t>(rank < values_count));
      out[j] = static_cast<Bits>(value & static_cast<Bits>(Bits(0) - use));
      rank += keep[j];
    }
  });
}

// Each tile is gathered into a staging buffer with unconditional stores (a dropped element's
// store is overwritten by the next kept one), then copied out: the stores never cross into the
// ranks of the next chunk, which another thread may be writing.
template <typename Bits>
void compress_typed(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                    int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                    const MaskKey& key) {
  Bits staged[kTileElements + 1];
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    const Bits* in = full + tile;
    int64_t kept = 0;
    for (int64_t j = 0; j < length; ++j) {
      staged[kept] = in[j];
      kept += keep[j];
    }
    const int64_t room = std::max<int64_t>(0, std::min(kept, values_count - rank));
    std::copy(staged, staged + room, values + rank);
    rank += kept;
  });
}

template <template <typename> class Action, typename... Args>
void with_bits(int element_size, Args&&... args) {
  switch (element_size) {
    case 1: return Action<uint8_t>::run(args...);
    case 2: return Action<uint16_t>::run(args...);
    case 4: return Action<uint32_t>::run(args...);
    case 8: return Action<uint64_t>::run(args...);
    default: throw std::invalid_argument("compact ops: element_size must be 1, 2, 4 or 8");
  }
}

template <typename Bits>
struct Expand {
  static void run(CpuIsa isa, const void* values, int64_t values_count, void* output, int64_t begin,
                  int64_t end, int64_t first_rank, uint64_t element_offset, const MaskKey& key) {
    expand_typed(isa, static_cast<const Bits*>(values), values_count, static_cast<Bits*>(output),
                 begin, end, first_rank, element_offset, key);
  }
};

template <typename Bits>
struct Compress {
  static void run(CpuIsa isa, const void* full, void* values, int64_t values_count, int64_t begin,
                  int64_t end, int64_t first_rank, uint64_t element_offset, const MaskKey& key) {
    compress_typed(isa, static_cast<const Bits*>(full), static_cast<Bits*>(values), values_count,
                   begin, end, first_rank, element_offset, key);
  }
};

}  // namespace

int64_t count_kept_range(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset,
                         const MaskKey& key) {
  int64_t count = 0;
  for_each_keep_tile(isa, begin, end, element_offset, key,
                     [&](int64_t, int64_t length, const uint8_t* keep) { count += count_bytes(keep, length); });
  return count;
}

void expand_range(CpuIsa isa, const void* values, int64_t values_count, void* output,
                  int element_size, int64_t begin, int64_t end, int64_t first_rank,
                  uint64_t element_offset, const MaskKey& key) {
  with_bits<Expand>(element_size, isa, values, values_count, output, begin, end, first_rank,
                    element_offset, key);
}

void compress_range(CpuIsa isa, const void* full, void* values, int64_t values_count,
                    int element_size, int64_t begin, int64_t end, int64_t first_rank,
                    uint64_t element_offset, const MaskKey& key) {
  with_bits<Compress>(element_size, isa, full, values, values_count, begin, end, first_rank,
                      element_offset, key);
}

}  // namespace tinybig_cuda
