#include "core/cpu/compact_ranges.h"

#include <algorithm>
#include <cstring>

#include "core/cpu/masked_copy.h"
#include "core/element_size.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "core/cpu/philox_avx2.h"
#endif

namespace tinybig_cuda {
namespace {

// The count, expand and compress run the same vectorized Philox as bernoulli_mask_apply, so they
// cannot disagree with it. The AVX2 path takes each vector of keep lanes from
// philox_keep_steps_avx2 as the masked copy does; the scalar and AVX-512 paths, and the partial
// steps at a range's ends, make the mask a tile at a time as bytes (1 kept, 0 dropped) by the
// masked copy of a tile of ones. A tile's bytes stay in L1.
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

// ---------------------------------------------------------------- one tile, scalar
// Both loops are branch-free: a random mask would mispredict half the branches of the obvious
// ones. Keep bytes are 0 or 1, so 0 - keep is all-ones or zero bits.

// Elements [j, length) of a tile; `rank` moves past the kept ones.
template <typename Bits>
void expand_tile_scalar(const Bits* values, int64_t values_count, Bits* out, const uint8_t* keep,
                        int64_t j, int64_t length, int64_t& rank) {
  const int64_t last = values_count - 1;  // values_count > 0 here
  for (; j < length; ++j) {
    const Bits value = values[rank < last ? rank : last];  // always in bounds
    const Bits use = static_cast<Bits>(keep[j] & static_cast<uint8_t>(rank < values_count));
    out[j] = static_cast<Bits>(value & static_cast<Bits>(Bits(0) - use));
    rank += keep[j];
  }
}

// Kept elements of [j, length) to out[kept...], below `room`: unconditional stores, each dropped
// element's overwritten by the next kept one (which exists while kept < room).
template <typename Bits>
void compress_tile_scalar(const Bits* in, Bits* out, const uint8_t* keep, int64_t j, int64_t length,
                          int64_t room, int64_t& kept) {
  for (; j < length; ++j) {
    if (kept < room) out[kept] = in[j];  // always true but at the range's last kept elements
    kept += keep[j];
  }
}

// ---------------------------------------------------------------- one tile, AVX-512
// VPEXPAND loads exactly the kept count of values into the kept lanes (a masked load, so it never
// touches memory past them); VPCOMPRESS packs the kept lanes of a register. 2-byte lanes need
// AVX512_VBMI2 besides the AVX-512 path's F, BW and VL. Each returns where the scalar loop goes on.
#if defined(__x86_64__)
TINYBIG_TARGET_AVX512 inline uint32_t keep_bits_avx512(const uint8_t* keep, int lanes) {
  if (lanes == 32) {
    return _mm256_test_epi8_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keep)), _mm256_set1_epi8(1));
  }
  const __m128i bytes = lanes == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep))
                                    : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep));
  return _mm_test_epi8_mask(bytes, _mm_set1_epi8(1));  // bytes past 8 are zero for 8 lanes
}

// One 64-byte vector of lanes: expand-load from values + rank, or compress a loaded vector.
TINYBIG_TARGET_AVX512 inline __m512i expand_load(uint32_t keep, const uint32_t* values) {
  return _mm512_maskz_expandloadu_epi32(static_cast<__mmask16>(keep), values);
}
TINYBIG_TARGET_AVX512 inline __m512i expand_load(uint32_t keep, const uint64_t* values) {
  return _mm512_maskz_expandloadu_epi64(static_cast<__mmask8>(keep), values);
}
TINYBIG_TARGET_AVX512_VBMI2 inline __m512i expand_load(uint32_t keep, const uint16_t* values) {
  return _mm512_maskz_expandloadu_epi16(keep, values);
}
TINYBIG_TARGET_AVX512 inline __m512i compress(uint32_t keep, __m512i vector, const uint32_t*) {
  return _mm512_maskz_compress_epi32(static_cast<__mmask16>(keep), vector);
}
TINYBIG_TARGET_AVX512 inline __m512i compress(uint32_t keep, __m512i vector, const uint64_t*) {
  return _mm512_maskz_compress_epi64(static_cast<__mmask8>(keep), vector);
}
TINYBIG_TARGET_AVX512_VBMI2 inline __m512i compress(uint32_t keep, __m512i vector, const uint16_t*) {
  return _mm512_maskz_compress_epi16(keep, vector);
}

#define TINYBIG_DEFINE_TILE_AVX512(Bits, target)                                                  \
  target int64_t expand_tile_avx512(const Bits* values, int64_t values_count, Bits* out,         \
                                    const uint8_t* keep, int64_t length, int64_t& rank) {         \
    constexpr int kLanes = 64 / sizeof(Bits);                                                     \
    int64_t j = 0;                                                                                \
    for (; j + kLanes <= length; j += kLanes) {                                                   \
      const uint32_t bits = keep_bits_avx512(keep + j, kLanes);                                   \
      const int64_t kept = _mm_popcnt_u32(bits);                                                  \
      if (rank + kept > values_count) break; /* the scalar loop zeroes what lies past values */  \
      _mm512_storeu_si512(out + j, expand_load(bits, values + rank));                             \
      rank += kept;                                                                               \
    }                                                                                             \
    return j;                                                                                     \
  }                                                                                               \
  target int64_t compress_tile_avx512(const Bits* in, Bits* out, const uint8_t* keep,            \
                                      int64_t length, int64_t room, int64_t& kept) {              \
    constexpr int kLanes = 64 / sizeof(Bits);                                                     \
    int64_t j = 0;                                                                                \
    for (; j + kLanes <= length && kept + kLanes <= room; j += kLanes) {                          \
      const uint32_t bits = keep_bits_avx512(keep + j, kLanes);                                   \
      _mm512_storeu_si512(out + kept, compress(bits, _mm512_loadu_si512(in + j), in));            \
      kept += _mm_popcnt_u32(bits);                                                               \
    }                                                                                             \
    return j;                                                                                     \
  }

TINYBIG_DEFINE_TILE_AVX512(uint16_t, TINYBIG_TARGET_AVX512_VBMI2)
TINYBIG_DEFINE_TILE_AVX512(uint32_t, TINYBIG_TARGET_AVX512)
TINYBIG_DEFINE_TILE_AVX512(uint64_t, TINYBIG_TARGET_AVX512)
#undef TINYBIG_DEFINE_TILE_AVX512

template <typename Bits>
bool has_avx512_tiles(CpuIsa isa) {
  if (isa != CpuIsa::kAvx512 || sizeof(Bits) == 1) return false;
  return sizeof(Bits) != 2 || cpu_supports_avx512_vbmi2();
}

// ---------------------------------------------------------------- AVX2, fused with Philox
// No keep bytes: philox_keep_steps_avx2 hands over each vector of 8 keep lanes while it is in
// registers. AVX2 has no expand or compress instruction, so a table indexed by the 8 keep bits
// gives the permutation that moves values into the kept lanes (expand) or the kept lanes to the
// front (compress): VPERMD for 4- and 8-byte elements, PSHUFB for 2-byte ones.

struct PermutationTables {
  // 8 elements of 4 bytes (VPERMD indices), 4 of 8 bytes (pairs of VPERMD indices), 8 of 2 bytes
  // (PSHUFB byte indices).
  alignas(32) uint32_t expand4[256][8];
  alignas(32) uint32_t compress4[256][8];
  alignas(32) uint32_t expand8[16][8];
  alignas(32) uint32_t compress8[16][8];
  alignas(16) uint8_t expand2[256][16];
  alignas(16) uint8_t compress2[256][16];

  PermutationTables() {
    for (int bits = 0; bits < 256; ++bits) {
      int kept = 0;
      for (int lane = 0; lane < 8; ++lane) {
        // Expand: a lane takes the value numbered by the kept lanes before it (dropped lanes are
        // zeroed afterwards). Compress: position `kept` takes this lane.
        set(expand4[bits], expand2[bits], lane, kept);
        if ((bits >> lane) & 1) set(compress4[bits], compress2[bits], kept++, lane);
      }
      for (int lane = kept; lane < 8; ++lane) set(compress4[bits], compress2[bits], lane, 0);
    }
    for (int bits = 0; bits < 16; ++bits) {
      int kept = 0;
      for (int lane = 0; lane < 4; ++lane) {
        set_pair(expand8[bits], lane, kept);
        if ((bits >> lane) & 1) set_pair(compress8[bits], kept++, lane);
      }
      for (int lane = kept; lane < 4; ++lane) set_pair(compress8[bits], lane, 0);
    }
  }
  static void set(uint32_t* four_byte, uint8_t* two_byte, int lane, int source) {
    four_byte[lane] = static_cast<uint32_t>(source);
    two_byte[2 * lane] = static_cast<uint8_t>(2 * source);
    two_byte[2 * lane + 1] = static_cast<uint8_t>(2 * source + 1);
  }
  static void set_pair(uint32_t* indices, int lane, int source) {
    indices[2 * lane] = static_cast<uint32_t>(2 * source);
    indices[2 * lane + 1] = static_cast<uint32_t>(2 * source + 1);
  }
};

const PermutationTables& permutation_tables() {
  static const PermutationTables tables;
  return tables;
}

TINYBIG_TARGET_AVX2 inline __m256i load256(const void* address) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(address));
}
TINYBIG_TARGET_AVX2 inline __m128i load128(const void* address) {
  return _mm_loadu_si128(static_cast<const __m128i*>(address));
}
TINYBIG_TARGET_AVX2 inline uint32_t keep_bits(__m256i keep) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(keep)));
}

// Counts the kept lanes.
struct CountAvx2 {
  int64_t kept = 0;
  TINYBIG_TARGET_AVX2 inline void operator()(int64_t, __m256i keep) { kept += _mm_popcnt_u32(keep_bits(keep)); }
};

// out[element + lane] = values[rank...] in the kept lanes, zero bits in the dropped ones; never
// reads values[values_count] or beyond (a kept lane past it gets zero bits).
template <typename Bits>
struct ExpandAvx2 {
  const Bits* values;
  int64_t values_count;
  Bits* out;
  int64_t rank;
  const PermutationTables& tables = permutation_tables();  // once, not per vector

  TINYBIG_TARGET_AVX2 inline void operator()(int64_t element, __m256i keep) {
    const uint32_t bits = keep_bits(keep);
    Bits* to = out + element;
    if (rank + 8 > values_count) {  // the loads below read 8 values: near the end, one at a time
      for (int lane = 0; lane < 8; ++lane) {
        const bool kept = (bits >> lane) & 1;
        to[lane] = kept && rank < values_count ? values[rank] : Bits(0);
        rank += kept;
      }
      return;
    }
    if constexpr (sizeof(Bits) == 4) {
      const __m256i moved = _mm256_permutevar8x32_epi32(load256(values + rank), load256(tables.expand4[bits]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), _mm256_and_si256(moved, keep));
    } else if constexpr (sizeof(Bits) == 8) {
      const uint32_t low = bits & 15, high = bits >> 4;
      const __m256i moved_low = _mm256_permutevar8x32_epi32(load256(values + rank), load256(tables.expand8[low]));
      const int64_t high_rank = rank + _mm_popcnt_u32(low);
      const __m256i moved_high = _mm256_permutevar8x32_epi32(load256(values + high_rank), load256(tables.expand8[high]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to),
                          _mm256_and_si256(moved_low, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 4),
                          _mm256_and_si256(moved_high, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1))));
    } else {
      const __m128i mask = _mm_packs_epi32(_mm256_castsi256_si128(keep), _mm256_extracti128_si256(keep, 1));
      const __m128i moved = _mm_shuffle_epi8(load128(values + rank), load128(tables.expand2[bits]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to), _mm_and_si128(moved, mask));
    }
    rank += _mm_popcnt_u32(bits);
  }
};

// values[kept...] = in[element + lane] of the kept lanes, writing only below `room`. A vector
// store writes 8 lanes from `kept` on; those past the kept ones are overwritten by the next kept
// elements, which exist while kept + 8 <= room.
template <typename Bits>
struct CompressAvx2 {
  const Bits* in;
  Bits* values;
  int64_t room;
  int64_t kept;
  const PermutationTables& tables = permutation_tables();  // once, not per vector

  TINYBIG_TARGET_AVX2 inline void operator()(int64_t element, __m256i keep) {
    const uint32_t bits = keep_bits(keep);
    const Bits* from = in + element;
    if (kept + 8 > room) {
      for (int lane = 0; lane < 8; ++lane) {
        if (kept < room) values[kept] = from[lane];
        kept += (bits >> lane) & 1;
      }
      return;
    }
    if constexpr (sizeof(Bits) == 4) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + kept),
                          _mm256_permutevar8x32_epi32(load256(from), load256(tables.compress4[bits])));
    } else if constexpr (sizeof(Bits) == 8) {
      const uint32_t low = bits & 15, high = bits >> 4;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + kept),
                          _mm256_permutevar8x32_epi32(load256(from), load256(tables.compress8[low])));
      const int64_t high_kept = kept + _mm_popcnt_u32(low);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + high_kept),
                          _mm256_permutevar8x32_epi32(load256(from + 4), load256(tables.compress8[high])));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(values + kept),
                       _mm_shuffle_epi8(load128(from), load128(tables.compress2[bits])));
    }
    kept += _mm_popcnt_u32(bits);
  }
};

// The whole Philox blocks of [begin, end) that fill whole AVX2 steps.
struct Avx2Span {
  uint64_t first_block;
  int64_t begin;  // of the vector part; [range begin, begin) and [end, range end) are left over
  int64_t end;
  int64_t steps;
};

Avx2Span avx2_span(int64_t begin, int64_t end, uint64_t element_offset) {
  const uint64_t first_block = (element_offset + begin + kWordsPerBlock - 1) / kWordsPerBlock;
  const int64_t vector_begin = static_cast<int64_t>(first_block * kWordsPerBlock - element_offset);
  const int64_t steps = vector_begin < end ? (end - vector_begin) / kAvx2StepElements : 0;
  if (steps == 0) return {first_block, end, end, 0};
  return {first_block, vector_begin, vector_begin + steps * kAvx2StepElements, steps};
}
#endif  // __x86_64__

// ---------------------------------------------------------------- whole ranges
// Each runs the keep-byte tiles (scalar or AVX-512) over [begin, end) and returns the rank after
// the range; the AVX2 path runs them only on the partial steps at either end.

template <typename Bits>
int64_t expand_tiles(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                     int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                     const MaskKey& key) {
  if (values_count == 0) {  // nothing to read: every element is dropped or past the end
    std::fill(output + begin, output + end, Bits(0));
    return rank;
  }
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    Bits* out = output + tile;
    int64_t j = 0;
#if defined(__x86_64__)
    if constexpr (sizeof(Bits) > 1) {
      if (has_avx512_tiles<Bits>(isa)) j = expand_tile_avx512(values, values_count, out, keep, length, rank);
    }
#endif
    expand_tile_scalar(values, values_count, out, keep, j, length, rank);
  });
  return rank;
}

// Straight into values: a vector store writes a whole vector from the next rank on, so the vector
// loops stop where less than a vector of ranks remains below values_count, and the scalar loop
// goes on. The caller bounds values_count by the range's last rank + 1, so that no store reaches
// the ranks of another range, which another thread may be writing.
template <typename Bits>
int64_t compress_tiles(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                       int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                       const MaskKey& key) {
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    const Bits* in = full + tile;
    const int64_t room = std::max<int64_t>(0, values_count - rank);
    Bits* out = values + std::min(rank, values_count);
    int64_t kept = 0, j = 0;
#if defined(__x86_64__)
    if constexpr (sizeof(Bits) > 1) {
      if (has_avx512_tiles<Bits>(isa)) j = compress_tile_avx512(in, out, keep, length, room, kept);
    }
#endif
    compress_tile_scalar(in, out, keep, j, length, room, kept);
    rank += kept;
  });
  return rank;
}

// The AVX2 path serves what AVX-512 tiles do not: every element size but bytes (which no op
// passes) on AVX2 CPUs, and 2-byte elements on AVX-512 CPUs without VBMI2.
template <typename Bits>
bool uses_avx2_path(CpuIsa isa) {
#if defined(__x86_64__)
  return sizeof(Bits) > 1 && isa != CpuIsa::kScalar && !has_avx512_tiles<Bits>(isa);
#else
  (void)isa;
  return false;
#endif
}

template <typename Bits>
void expand_typed(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                  int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                  const MaskKey& key) {
#if defined(__x86_64__)
  if (uses_avx2_path<Bits>(isa) && values_count > 0) {
    const Avx2Span span = avx2_span(begin, end, element_offset);
    rank = expand_tiles(isa, values, values_count, output, begin, span.begin, rank, element_offset, key);
    ExpandAvx2<Bits> expand{values, values_count, output + span.begin, rank};
    philox_keep_steps_avx2(span.first_block, span.steps, key, expand);
    expand_tiles(isa, values, values_count, output, span.end, end, expand.rank, element_offset, key);
    return;
  }
#endif
  expand_tiles(isa, values, values_count, output, begin, end, rank, element_offset, key);
}

template <typename Bits>
void compress_typed(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                    int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                    const MaskKey& key) {
#if defined(__x86_64__)
  if (uses_avx2_path<Bits>(isa)) {
    const Avx2Span span = avx2_span(begin, end, element_offset);
    rank = compress_tiles(isa, full, values, values_count, begin, span.begin, rank, element_offset, key);
    // From here on, ranks count from `rank`: the bound is what lies below values_count.
    CompressAvx2<Bits> compress{full + span.begin, values + std::min(rank, values_count),
                                std::max<int64_t>(0, values_count - rank), 0};
    philox_keep_steps_avx2(span.first_block, span.steps, key, compress);
    compress_tiles(isa, full, values, values_count, span.end, end, rank + compress.kept, element_offset, key);
    return;
  }
#endif
  compress_tiles(isa, full, values, values_count, begin, end, rank, element_offset, key);
}

}  // namespace

int64_t count_kept_range(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset,
                         const MaskKey& key) {
  int64_t count = 0;
  const auto count_tiles = [&](int64_t from, int64_t to) {
    for_each_keep_tile(isa, from, to, element_offset, key,
                       [&](int64_t, int64_t length, const uint8_t* keep) { count += count_bytes(keep, length); });
  };
#if defined(__x86_64__)
  if (isa == CpuIsa::kAvx2) {
    const Avx2Span span = avx2_span(begin, end, element_offset);
    count_tiles(begin, span.begin);
    CountAvx2 counter;
    philox_keep_steps_avx2(span.first_block, span.steps, key, counter);
    count_tiles(span.end, end);
    return count + counter.kept;
  }
#endif
  count_tiles(begin, end);
  return count;
}

void expand_range(CpuIsa isa, const void* values, int64_t values_count, void* output,
                  int element_size, int64_t begin, int64_t end, int64_t first_rank,
                  uint64_t element_offset, const MaskKey& key) {
  visit_element_bits(element_size, [&](auto bits) {
    using Bits = decltype(bits);
    expand_typed(isa, static_cast<const Bits*>(values), values_count, static_cast<Bits*>(output),
                 begin, end, first_rank, element_offset, key);
  });
}

void compress_range(CpuIsa isa, const void* full, void* values, int64_t values_count,
                    int element_size, int64_t begin, int64_t end, int64_t first_rank,
                    uint64_t element_offset, const MaskKey& key) {
  visit_element_bits(element_size, [&](auto bits) {
    using Bits = decltype(bits);
    compress_typed(isa, static_cast<const Bits*>(full), static_cast<Bits*>(values), values_count,
                   begin, end, first_rank, element_offset, key);
  });
}

}  // namespace tinybig_cuda
