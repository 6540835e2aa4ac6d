#include "compact_ranges.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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
#define TINYBIG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))
#define TINYBIG_AVX512_VBMI2 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))

TINYBIG_AVX512 inline uint32_t keep_bits_avx512(const uint8_t* keep, int lanes) {
  if (lanes == 32) {
    return _mm256_test_epi8_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keep)), _mm256_set1_epi8(1));
  }
  const __m128i bytes = lanes == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep))
                                    : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep));
  return _mm_test_epi8_mask(bytes, _mm_set1_epi8(1));  // bytes past 8 are zero for 8 lanes
}

// One 64-byte vector of lanes: expand-load from values + rank, or compress a loaded vector.
TINYBIG_AVX512 inline __m512i expand_load(uint32_t keep, const uint32_t* values) {
  return _mm512_maskz_expandloadu_epi32(static_cast<__mmask16>(keep), values);
}
TINYBIG_AVX512 inline __m512i expand_load(uint32_t keep, const uint64_t* values) {
  return _mm512_maskz_expandloadu_epi64(static_cast<__mmask8>(keep), values);
}
TINYBIG_AVX512_VBMI2 inline __m512i expand_load(uint32_t keep, const uint16_t* values) {
  return _mm512_maskz_expandloadu_epi16(keep, values);
}
TINYBIG_AVX512 inline __m512i compress(uint32_t keep, __m512i vector, const uint32_t*) {
  return _mm512_maskz_compress_epi32(static_cast<__mmask16>(keep), vector);
}
TINYBIG_AVX512 inline __m512i compress(uint32_t keep, __m512i vector, const uint64_t*) {
  return _mm512_maskz_compress_epi64(static_cast<__mmask8>(keep), vector);
}
TINYBIG_AVX512_VBMI2 inline __m512i compress(uint32_t keep, __m512i vector, const uint16_t*) {
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

TINYBIG_DEFINE_TILE_AVX512(uint16_t, TINYBIG_AVX512_VBMI2)
TINYBIG_DEFINE_TILE_AVX512(uint32_t, TINYBIG_AVX512)
TINYBIG_DEFINE_TILE_AVX512(uint64_t, TINYBIG_AVX512)
#undef TINYBIG_DEFINE_TILE_AVX512

// ---------------------------------------------------------------- one tile, AVX2
// No expand or compress instruction: a table, indexed by the keep bits of one vector, gives the
// permutation that moves values into the kept lanes (expand) or the kept lanes to the front
// (compress). 4- and 8-byte lanes use VPERMD on 32 bytes, 2-byte lanes PSHUFB on 16 bytes.
#define TINYBIG_AVX2 __attribute__((target("avx2,popcnt")))

struct PermutationTables {
  // Steps of 8 lanes of 4 bytes (VPERMD indices), 4 lanes of 8 bytes (pairs of VPERMD indices),
  // and 8 lanes of 2 bytes (PSHUFB byte indices).
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
        // Expand: lane takes the value numbered by the kept lanes before it (dropped lanes are
        // zeroed afterwards, whatever they take). Compress: position `kept` takes this lane.
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

// The keep bits of `lanes` (4 or 8) keep bytes, and the all-ones or zero lane mask they make.
TINYBIG_AVX2 inline uint32_t keep_bits_avx2(const uint8_t* keep, int lanes) {
  uint64_t bytes = 0;
  std::memcpy(&bytes, keep, static_cast<size_t>(lanes));
  // Bytes are 0 or 1: shifted to the top bit of each byte, MOVMSKB collects them.
  return static_cast<uint32_t>(_mm_movemask_epi8(_mm_slli_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(bytes)), 7)));
}

TINYBIG_AVX2 inline __m256i lane_mask(const uint8_t* keep, const uint32_t*) {
  return _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep))), _mm256_setzero_si256());
}
TINYBIG_AVX2 inline __m256i lane_mask(const uint8_t* keep, const uint64_t*) {
  int32_t bytes = 0;
  std::memcpy(&bytes, keep, 4);
  return _mm256_cmpgt_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128(bytes)), _mm256_setzero_si256());
}

template <typename Bits>
TINYBIG_AVX2 int64_t expand_tile_avx2(const Bits* values, int64_t values_count, Bits* out,
                                      const uint8_t* keep, int64_t length, int64_t& rank) {
  const PermutationTables& tables = permutation_tables();
  int64_t j = 0;
  if constexpr (sizeof(Bits) == 2) {
    for (; j + 8 <= length && rank + 8 <= values_count; j += 8) {  // reads 8 values
      const uint32_t bits = keep_bits_avx2(keep + j, 8);
      const __m128i loaded = _mm_loadu_si128(reinterpret_cast<const __m128i*>(values + rank));
      const __m128i moved = _mm_shuffle_epi8(loaded, _mm_load_si128(reinterpret_cast<const __m128i*>(tables.expand2[bits])));
      const __m128i mask = _mm_cmpgt_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep + j))), _mm_setzero_si128());
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm_and_si128(moved, mask));
      rank += _mm_popcnt_u32(bits);
    }
  } else {
    constexpr int kLanes = 32 / sizeof(Bits);
    for (; j + kLanes <= length && rank + kLanes <= values_count; j += kLanes) {
      const uint32_t bits = keep_bits_avx2(keep + j, kLanes);
      const uint32_t* indices = sizeof(Bits) == 4 ? tables.expand4[bits] : tables.expand8[bits];
      const __m256i loaded = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + rank));
      const __m256i moved = _mm256_permutevar8x32_epi32(loaded, _mm256_load_si256(reinterpret_cast<const __m256i*>(indices)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_and_si256(moved, lane_mask(keep + j, out)));
      rank += _mm_popcnt_u32(bits);
    }
  }
  return j;
}

template <typename Bits>
TINYBIG_AVX2 int64_t compress_tile_avx2(const Bits* in, Bits* out, const uint8_t* keep,
                                        int64_t length, int64_t room, int64_t& kept) {
  const PermutationTables& tables = permutation_tables();
  int64_t j = 0;
  if constexpr (sizeof(Bits) == 2) {
    for (; j + 8 <= length && kept + 8 <= room; j += 8) {
      const uint32_t bits = keep_bits_avx2(keep + j, 8);
      const __m128i loaded = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kept),
                       _mm_shuffle_epi8(loaded, _mm_load_si128(reinterpret_cast<const __m128i*>(tables.compress2[bits]))));
      kept += _mm_popcnt_u32(bits);
    }
  } else {
    constexpr int kLanes = 32 / sizeof(Bits);
    for (; j + kLanes <= length && kept + kLanes <= room; j += kLanes) {
      const uint32_t bits = keep_bits_avx2(keep + j, kLanes);
      const uint32_t* indices = sizeof(Bits) == 4 ? tables.compress4[bits] : tables.compress8[bits];
      const __m256i loaded = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + kept),
                          _mm256_permutevar8x32_epi32(loaded, _mm256_load_si256(reinterpret_cast<const __m256i*>(indices))));
      kept += _mm_popcnt_u32(bits);
    }
  }
  return j;
}

// Which vector tiles serve elements of `Bits` on `isa`: AVX-512's where it has them (2-byte lanes
// need AVX512_VBMI2), else AVX2's.
enum class VectorTiles { kNone, kAvx2, kAvx512 };

template <typename Bits>
VectorTiles vector_tiles(CpuIsa isa) {
  if (isa == CpuIsa::kScalar || sizeof(Bits) == 1) return VectorTiles::kNone;
  if (isa == CpuIsa::kAvx512) {
    static const bool vbmi2 = __builtin_cpu_supports("avx512vbmi2");
    if (sizeof(Bits) != 2 || vbmi2) return VectorTiles::kAvx512;
  }
  return VectorTiles::kAvx2;
}
#endif  // __x86_64__

// ---------------------------------------------------------------- whole ranges

template <typename Bits>
void expand_typed(CpuIsa isa, const Bits* values, int64_t values_count, Bits* output,
                  int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                  const MaskKey& key) {
  if (values_count == 0) {  // nothing to read: every element is dropped or past the end
    std::fill(output + begin, output + end, Bits(0));
    return;
  }
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    Bits* out = output + tile;
    int64_t j = 0;
#if defined(__x86_64__)
    if constexpr (sizeof(Bits) > 1) {
      switch (vector_tiles<Bits>(isa)) {
        case VectorTiles::kAvx512: j = expand_tile_avx512(values, values_count, out, keep, length, rank); break;
        case VectorTiles::kAvx2: j = expand_tile_avx2(values, values_count, out, keep, length, rank); break;
        case VectorTiles::kNone: break;
      }
    }
#endif
    expand_tile_scalar(values, values_count, out, keep, j, length, rank);
  });
}

// Straight into values: a vector store writes a whole vector from the next rank on, so the vector
// loops stop where less than a vector of ranks remains below values_count, and the scalar loop
// goes on. The caller bounds values_count by the range's last rank + 1, so that no store reaches
// the ranks of another range, which another thread may be writing.
template <typename Bits>
void compress_typed(CpuIsa isa, const Bits* full, Bits* values, int64_t values_count,
                    int64_t begin, int64_t end, int64_t rank, uint64_t element_offset,
                    const MaskKey& key) {
  for_each_keep_tile(isa, begin, end, element_offset, key, [&](int64_t tile, int64_t length, const uint8_t* keep) {
    const Bits* in = full + tile;
    const int64_t room = std::max<int64_t>(0, values_count - rank);
    Bits* out = values + std::min(rank, values_count);
    int64_t kept = 0, j = 0;
#if defined(__x86_64__)
    if constexpr (sizeof(Bits) > 1) {
      switch (vector_tiles<Bits>(isa)) {
        case VectorTiles::kAvx512: j = compress_tile_avx512(in, out, keep, length, room, kept); break;
        case VectorTiles::kAvx2: j = compress_tile_avx2(in, out, keep, length, room, kept); break;
        case VectorTiles::kNone: break;
      }
    }
#endif
    compress_tile_scalar(in, out, keep, j, length, room, kept);
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
