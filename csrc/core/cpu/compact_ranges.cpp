#include "core/cpu/compact_ranges.h"

#include <algorithm>
#include <cstring>

#include "core/cpu/masked_copy.h"
#include "core/element_size.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "core/cpu/philox_avx2.h"
#include "core/cpu/philox_avx512.h"
#endif

namespace tinybig_cuda {
namespace {

// The count, expand and compress run the same vectorized Philox as bernoulli_mask_apply, so they
// cannot disagree with it. The AVX2 and AVX-512 paths take each vector of keep lanes from
// philox_keep_steps_avx2 or philox_keep_steps_avx512 as the masked copy does, and move values
// while the lanes are in registers: one pass, as the masked copy. The scalar path, and the partial
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

// The `length` elements of a tile; `rank` moves past the kept ones.
template <typename Bits>
void expand_tile_scalar(const Bits* values, int64_t values_count, Bits* out, const uint8_t* keep,
                        int64_t length, int64_t& rank) {
  const int64_t last = values_count - 1;  // values_count > 0 here
  for (int64_t j = 0; j < length; ++j) {
    const Bits value = values[rank < last ? rank : last];  // always in bounds
    const Bits use = static_cast<Bits>(keep[j] & static_cast<uint8_t>(rank < values_count));
    out[j] = static_cast<Bits>(value & static_cast<Bits>(Bits(0) - use));
    rank += keep[j];
  }
}

// The kept ones of a tile's `length` elements to out[kept...], below `room`: unconditional stores,
// each dropped element's overwritten by the next kept one (which exists while kept < room).
template <typename Bits>
void compress_tile_scalar(const Bits* in, Bits* out, const uint8_t* keep, int64_t length,
                          int64_t room, int64_t& kept) {
  for (int64_t j = 0; j < length; ++j) {
    if (kept < room) out[kept] = in[j];  // always true but at the range's last kept elements
    kept += keep[j];
  }
}

#if defined(__x86_64__)
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

// ---------------------------------------------------------------- AVX-512, fused with Philox
// philox_keep_steps_avx512 hands over the 16 keep bits of each vector. VPEXPAND moves values into
// the kept lanes and VPCOMPRESS the kept lanes to the front: on 4-byte lanes for 4-byte elements,
// on two vectors of 8-byte lanes for 8-byte ones, and 2-byte elements are widened to 4-byte lanes
// and narrowed back (VPEXPANDW and VPCOMPRESSW need AVX512_VBMI2, which not every AVX-512 CPU has).

// Counts the kept lanes.
struct CountAvx512 {
  int64_t kept = 0;
  TINYBIG_TARGET_AVX512 inline void operator()(int64_t, __mmask16 keep) { kept += _mm_popcnt_u32(keep); }
};

// As ExpandAvx2: out[element + lane] = values[rank...] in the kept lanes, zero bits in the dropped
// ones, and never a read of values[values_count] or beyond. The loads read exactly the kept count.
template <typename Bits>
struct ExpandAvx512 {
  const Bits* values;
  int64_t values_count;
  Bits* out;
  int64_t rank;

  TINYBIG_TARGET_AVX512 inline void operator()(int64_t element, __mmask16 keep) {
    const int kept = _mm_popcnt_u32(keep);
    Bits* to = out + element;
    if (rank + kept > values_count) {  // past the end of values: one lane at a time
      for (int lane = 0; lane < 16; ++lane) {
        const bool is_kept = (keep >> lane) & 1;
        to[lane] = is_kept && rank < values_count ? values[rank] : Bits(0);
        rank += is_kept;
      }
      return;
    }
    const Bits* from = values + rank;
    if constexpr (sizeof(Bits) == 4) {
      _mm512_storeu_si512(to, _mm512_maskz_expandloadu_epi32(keep, from));
    } else if constexpr (sizeof(Bits) == 8) {
      const __mmask8 low = static_cast<__mmask8>(keep), high = static_cast<__mmask8>(keep >> 8);
      _mm512_storeu_si512(to, _mm512_maskz_expandloadu_epi64(low, from));
      _mm512_storeu_si512(to + 8, _mm512_maskz_expandloadu_epi64(high, from + _mm_popcnt_u32(low)));
    } else {
      const __mmask16 first_kept = static_cast<__mmask16>((1u << kept) - 1);
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first_kept, from));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), _mm512_cvtepi32_epi16(_mm512_maskz_expand_epi32(keep, wide)));
    }
    rank += kept;
  }
};

// As CompressAvx2: values[kept...] = in[element + lane] of the kept lanes, writing only below
// `room`; a store writes 16 lanes from `kept` on.
template <typename Bits>
struct CompressAvx512 {
  const Bits* in;
  Bits* values;
  int64_t room;
  int64_t kept;

  TINYBIG_TARGET_AVX512 inline void operator()(int64_t element, __mmask16 keep) {
    const Bits* from = in + element;
    if (kept + 16 > room) {
      for (int lane = 0; lane < 16; ++lane) {
        if (kept < room) values[kept] = from[lane];
        kept += (keep >> lane) & 1;
      }
      return;
    }
    if constexpr (sizeof(Bits) == 4) {
      _mm512_storeu_si512(values + kept, _mm512_maskz_compress_epi32(keep, _mm512_loadu_si512(from)));
    } else if constexpr (sizeof(Bits) == 8) {
      const __mmask8 low = static_cast<__mmask8>(keep), high = static_cast<__mmask8>(keep >> 8);
      _mm512_storeu_si512(values + kept, _mm512_maskz_compress_epi64(low, _mm512_loadu_si512(from)));
      _mm512_storeu_si512(values + kept + _mm_popcnt_u32(low), _mm512_maskz_compress_epi64(high, _mm512_loadu_si512(from + 8)));
    } else {
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(from)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + kept), _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(keep, wide)));
    }
    kept += _mm_popcnt_u32(keep);
  }
};

// The whole Philox blocks of [begin, end) that fill whole vector steps of `step_elements`.
struct VectorSpan {
  uint64_t first_block;
  int64_t begin;  // of the vector part; [range begin, begin) and [end, range end) are left over
  int64_t end;
  int64_t steps;
};

VectorSpan vector_span(int64_t begin, int64_t end, uint64_t element_offset, int64_t step_elements) {
  const uint64_t first_block = (element_offset + begin + kWordsPerBlock - 1) / kWordsPerBlock;
  const int64_t vector_begin = static_cast<int64_t>(first_block * kWordsPerBlock - element_offset);
  const int64_t steps = vector_begin < end ? (end - vector_begin) / step_elements : 0;
  if (steps == 0) return {first_block, end, end, 0};
  return {first_block, vector_begin, vector_begin + steps * step_elements, steps};
}
#endif  // __x86_64__

// ---------------------------------------------------------------- whole ranges
// Each runs the keep-byte tiles over [begin, end) and returns the rank after the range: the
// scalar path's whole range, the vector paths' partial steps at either end.

template <typename Bits>
int64_t expand_tiles(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                     int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                     const MaskKey& key) {
  if (values_count == 0) {  // nothing to read: every element is dropped or past the end
    std::fill(output + begin, output + end, Bits(0));
    return rank;
  }
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    expand_tile_scalar(values, values_count, output + tile, keep, length, rank);
  });
  return rank;
}

// Straight into values. The caller bounds values_count by the range's last rank + 1, so that no
// store reaches the ranks of another range, which another thread may be writing.
template <typename Bits>
int64_t compress_tiles(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                       int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                       const MaskKey& key) {
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    const int64_t room = std::max<int64_t>(0, values_count - rank);
    int64_t kept = 0;
    compress_tile_scalar(full + tile, values + std::min(rank, values_count), keep, length, room, kept);
    rank += kept;
  });
  return rank;
}

int64_t count_tiles(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key) {
  int64_t count = 0;
  for_each_keep_tile(isa, begin, end, element_offset, key,
                     [&](int64_t, int64_t length, const uint8_t* keep) { count += count_bytes(keep, length); });
  return count;
}

#if defined(__x86_64__)
// The vector paths, shaped as the masked copy's (masked_copy_vectorized): the tiles on the partial
// steps at either end of [begin, end), and between them `vector_steps` (a Philox of
// philox_avx2.h or philox_avx512.h) handing each vector of keep lanes to Expand or Compress.
template <typename Bits, typename Expand, int64_t kStepElements,
          void (*vector_steps)(uint64_t, int64_t, const MaskKey&, Expand&)>
void expand_vectorized(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                       int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                       const MaskKey& key) {
  const VectorSpan span = vector_span(begin, end, element_offset, kStepElements);
  rank = expand_tiles(isa, values, values_count, output, begin, span.begin, rank, element_offset, key);
  Expand expand{values, values_count, output + span.begin, rank};
  vector_steps(span.first_block, span.steps, key, expand);
  expand_tiles(isa, values, values_count, output, span.end, end, expand.rank, element_offset, key);
}

template <typename Bits, typename Compress, int64_t kStepElements,
          void (*vector_steps)(uint64_t, int64_t, const MaskKey&, Compress&)>
void compress_vectorized(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                         int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                         const MaskKey& key) {
  const VectorSpan span = vector_span(begin, end, element_offset, kStepElements);
  rank = compress_tiles(isa, full, values, values_count, begin, span.begin, rank, element_offset, key);
  // From here on, ranks count from `rank`: the bound is what lies below values_count.
  Compress compress{full + span.begin, values + std::min(rank, values_count),
                    std::max<int64_t>(0, values_count - rank), 0};
  vector_steps(span.first_block, span.steps, key, compress);
  compress_tiles(isa, full, values, values_count, span.end, end, rank + compress.kept, element_offset, key);
}

template <typename Count, int64_t kStepElements, void (*vector_steps)(uint64_t, int64_t, const MaskKey&, Count&)>
int64_t count_vectorized(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key) {
  const VectorSpan span = vector_span(begin, end, element_offset, kStepElements);
  Count counter;
  vector_steps(span.first_block, span.steps, key, counter);
  return count_tiles(isa, begin, span.begin, element_offset, key) + counter.kept +
         count_tiles(isa, span.end, end, element_offset, key);
}
#endif  // __x86_64__

// The vector paths serve every element size but bytes, which no compact op passes.
template <typename Bits>
void expand_typed(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                  int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                  const MaskKey& key) {
#if defined(__x86_64__)
  if constexpr (sizeof(Bits) > 1) {
    if (isa == CpuIsa::kAvx512 && values_count > 0) {
      return expand_vectorized<Bits, ExpandAvx512<Bits>, kAvx512StepElements, philox_keep_steps_avx512>(
          isa, values, values_count, output, begin, end, rank, element_offset, key);
    }
    if (isa == CpuIsa::kAvx2 && values_count > 0) {
      return expand_vectorized<Bits, ExpandAvx2<Bits>, kAvx2StepElements, philox_keep_steps_avx2>(
          isa, values, values_count, output, begin, end, rank, element_offset, key);
    }
  }
#endif
  expand_tiles(isa, values, values_count, output, begin, end, rank, element_offset, key);
}

template <typename Bits>
void compress_typed(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                    int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                    const MaskKey& key) {
#if defined(__x86_64__)
  if constexpr (sizeof(Bits) > 1) {
    if (isa == CpuIsa::kAvx512) {
      return compress_vectorized<Bits, CompressAvx512<Bits>, kAvx512StepElements, philox_keep_steps_avx512>(
          isa, full, values, values_count, begin, end, rank, element_offset, key);
    }
    if (isa == CpuIsa::kAvx2) {
      return compress_vectorized<Bits, CompressAvx2<Bits>, kAvx2StepElements, philox_keep_steps_avx2>(
          isa, full, values, values_count, begin, end, rank, element_offset, key);
    }
  }
#endif
  compress_tiles(isa, full, values, values_count, begin, end, rank, element_offset, key);
}

}  // namespace

int64_t count_kept_range(CpuIsa isa, int64_t begin, int64_t end, uint64_t element_offset,
                         const MaskKey& key) {
#if defined(__x86_64__)
  if (isa == CpuIsa::kAvx512) {
    return count_vectorized<CountAvx512, kAvx512StepElements, philox_keep_steps_avx512>(isa, begin, end, element_offset, key);
  }
  if (isa == CpuIsa::kAvx2) {
    return count_vectorized<CountAvx2, kAvx2StepElements, philox_keep_steps_avx2>(isa, begin, end, element_offset, key);
  }
#endif
  return count_tiles(isa, begin, end, element_offset, key);
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
