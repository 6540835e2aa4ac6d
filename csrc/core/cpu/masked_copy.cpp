#include "core/cpu/masked_copy.h"

#include "core/element_size.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "core/cpu/philox_avx2.h"
#include "core/cpu/philox_avx512.h"
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace tinybig_cuda {
namespace {

// Zero bits unless `word` keeps the element. Branch-free: a random mask would mispredict half the
// branches of `keeps ? value : 0`, which cost more than the Philox arithmetic on some CPUs.
template <typename Bits>
inline Bits kept_or_zero(Bits value, uint32_t word, uint64_t threshold) {
  return static_cast<Bits>(value & static_cast<Bits>(Bits(0) - static_cast<Bits>(keeps(word, threshold))));
}

// One block at a time: the partial blocks at either end of a range.
template <typename Bits>
void masked_copy_blockwise(const Bits* input, Bits* output, int64_t begin, int64_t end,
                           uint64_t element_offset, const MaskKey& key) {
  int64_t k = begin;
  while (k < end) {
    const uint64_t global = element_offset + static_cast<uint64_t>(k);
    const PhiloxWords words = mask_block_words(global / kWordsPerBlock, key);
    for (uint64_t w = global % kWordsPerBlock; w < kWordsPerBlock && k < end; ++w, ++k) {
      output[k] = kept_or_zero(input[k], words.word[w], key.threshold);
    }
  }
}

// The portable path's whole blocks: kPortableBlocks independent Philox blocks per step, rounds
// outside and blocks inside, so the multiplies of different blocks overlap instead of each waiting
// on the latency of the one before. Same arithmetic as philox4x32_10. Three blocks' 12 words, the
// round keys and the multipliers just fit x86-64's 16 general registers: on an AMD EPYC (Zen),
// 1, 2, 3, 4 and 8 blocks ran at 0.31, 0.40, 0.44, 0.28 and 0.24 G elements/s (4 and 8 spill).
constexpr int kPortableBlocks = 3;
constexpr int64_t kPortableStepElements = kPortableBlocks * kWordsPerBlock;

template <typename Bits>
void masked_copy_steps_portable(const Bits* input, Bits* output, uint64_t first_block, int64_t steps,
                                const MaskKey& key) {
  for (int64_t step = 0; step < steps; ++step) {
    uint32_t c0[kPortableBlocks], c1[kPortableBlocks], c2[kPortableBlocks], c3[kPortableBlocks];
    for (int b = 0; b < kPortableBlocks; ++b) {
      const uint64_t block = first_block + static_cast<uint64_t>(step * kPortableBlocks + b);
      c0[b] = low_word(block);
      c1[b] = high_word(block);
      c2[b] = low_word(key.offset);
      c3[b] = high_word(key.offset);
    }
    uint32_t k0 = low_word(key.seed), k1 = high_word(key.seed);
    for (int round = 0; round < kPhiloxRounds; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1) {
      for (int b = 0; b < kPortableBlocks; ++b) {
        const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * c0[b];
        const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * c2[b];
        c0[b] = high_word(product1) ^ c1[b] ^ k0;
        c2[b] = high_word(product0) ^ c3[b] ^ k1;
        c1[b] = low_word(product1);
        c3[b] = low_word(product0);
      }
    }
    const Bits* in = input + step * kPortableStepElements;
    Bits* out = output + step * kPortableStepElements;
    for (int b = 0; b < kPortableBlocks; ++b) {
      out[4 * b + 0] = kept_or_zero(in[4 * b + 0], c0[b], key.threshold);
      out[4 * b + 1] = kept_or_zero(in[4 * b + 1], c1[b], key.threshold);
      out[4 * b + 2] = kept_or_zero(in[4 * b + 2], c2[b], key.threshold);
      out[4 * b + 3] = kept_or_zero(in[4 * b + 3], c3[b], key.threshold);
    }
  }
}

// Runs the blockwise loop on the partial blocks at either end of [begin, end) and `vector_steps`
// on the whole ones between, `kStepElements` elements (a multiple of 4, block-aligned) at a time.
template <typename Bits, int64_t kStepElements,
          void (*vector_steps)(const Bits*, Bits*, uint64_t, int64_t, const MaskKey&)>
void masked_copy_vectorized(const Bits* input, Bits* output, int64_t begin, int64_t end,
                            uint64_t element_offset, const MaskKey& key) {
  const uint64_t first_whole_block = (element_offset + begin + kWordsPerBlock - 1) / kWordsPerBlock;
  const int64_t vector_begin = static_cast<int64_t>(first_whole_block * kWordsPerBlock - element_offset);
  const int64_t steps = vector_begin < end ? (end - vector_begin) / kStepElements : 0;
  if (steps == 0) return masked_copy_blockwise(input, output, begin, end, element_offset, key);
  const int64_t vector_end = vector_begin + steps * kStepElements;
  masked_copy_blockwise(input, output, begin, vector_begin, element_offset, key);
  vector_steps(input + vector_begin, output + vector_begin, first_whole_block, steps, key);
  masked_copy_blockwise(input, output, vector_end, end, element_offset, key);
}

#if defined(__x86_64__)
template <typename Bits>
TINYBIG_TARGET_AVX512 inline void store_kept_avx512(const Bits* input, Bits* output, __mmask16 keep) {
  if constexpr (sizeof(Bits) == 1) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(output), _mm_maskz_loadu_epi8(keep, input));
  } else if constexpr (sizeof(Bits) == 2) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(output), _mm256_maskz_loadu_epi16(keep, input));
  } else if constexpr (sizeof(Bits) == 4) {
    _mm512_storeu_si512(output, _mm512_maskz_loadu_epi32(keep, input));
  } else {
    _mm512_storeu_si512(output, _mm512_maskz_loadu_epi64(static_cast<__mmask8>(keep), input));
    _mm512_storeu_si512(output + 8, _mm512_maskz_loadu_epi64(static_cast<__mmask8>(keep >> 8), input + 8));
  }
}

template <typename Bits>
struct StoreKeptAvx512 {
  const Bits* input;
  Bits* output;
  TINYBIG_TARGET_AVX512 inline void operator()(int64_t element, __mmask16 keep) const {
    store_kept_avx512(input + element, output + element, keep);
  }
};

template <typename Bits>
TINYBIG_TARGET_AVX512 void masked_copy_steps_avx512(const Bits* input, Bits* output, uint64_t first_block,
                                             int64_t steps, const MaskKey& key) {
  StoreKeptAvx512<Bits> store{input, output};
  philox_keep_steps_avx512(first_block, steps, key, store);
}

// AVX2 masks are vectors of all-ones or zero 32-bit lanes; narrow or widen them to the element.
template <typename Bits>
TINYBIG_TARGET_AVX2 inline void store_kept_avx2(const Bits* input, Bits* output, __m256i keep) {
  if constexpr (sizeof(Bits) == 4) {
    const __m256i values = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(input));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(output), _mm256_and_si256(values, keep));
  } else if constexpr (sizeof(Bits) == 8) {
    const __m256i keep_low = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep));
    const __m256i keep_high = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1));
    const auto* in = reinterpret_cast<const __m256i*>(input);
    auto* out = reinterpret_cast<__m256i*>(output);
    _mm256_storeu_si256(out, _mm256_and_si256(_mm256_loadu_si256(in), keep_low));
    _mm256_storeu_si256(out + 1, _mm256_and_si256(_mm256_loadu_si256(in + 1), keep_high));
  } else {
    const __m128i keep16 = _mm_packs_epi32(_mm256_castsi256_si128(keep), _mm256_extracti128_si256(keep, 1));
    if constexpr (sizeof(Bits) == 2) {
      const __m128i values = _mm_loadu_si128(reinterpret_cast<const __m128i*>(input));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(output), _mm_and_si128(values, keep16));
    } else {
      const __m128i keep8 = _mm_packs_epi16(keep16, keep16);
      const __m128i values = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(input));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(output), _mm_and_si128(values, keep8));
    }
  }
}

template <typename Bits>
struct StoreKeptAvx2 {
  const Bits* input;
  Bits* output;
  TINYBIG_TARGET_AVX2 inline void operator()(int64_t element, __m256i keep) const {
    store_kept_avx2(input + element, output + element, keep);
  }
};

template <typename Bits>
TINYBIG_TARGET_AVX2 void masked_copy_steps_avx2(const Bits* input, Bits* output, uint64_t first_block,
                                         int64_t steps, const MaskKey& key) {
  StoreKeptAvx2<Bits> store{input, output};
  philox_keep_steps_avx2(first_block, steps, key, store);
}
#endif  // __x86_64__

#if defined(__aarch64__)
// NEON has no 32x32->64 multiply of lanes 0 and 2 like x86's, but widening multiplies of all four
// lanes (UMULL, UMULL2) and de-interleaving shuffles (UZP1, UZP2). So the blocks lie across lanes:
// a group of four blocks is four vectors, vector j holding word j of each block. One round of a
// group is 4 widening multiplies, 4 shuffles and 4 XORs: 3 instructions per block and round,
// against about 10 for the portable path. The interleaving loads and stores (LD4/ST4) turn the
// word-major masks back into element order, so no transpose is needed.
constexpr int kNeonGroups = 4;                  // groups of four blocks in flight, as on x86
constexpr int64_t kNeonStepElements = kNeonGroups * 4 * kWordsPerBlock;  // 64 elements

struct NeonBlocks {
  uint32x4_t word[kWordsPerBlock];  // word[j] lane b: word j of block b of the group
};

inline void philox_round_neon(NeonBlocks& s, uint32x4_t k0, uint32x4_t k1) {
  const uint64x2_t product0_low = vmull_n_u32(vget_low_u32(s.word[0]), kPhiloxM0);  // blocks 0, 1
  const uint64x2_t product0_high = vmull_high_n_u32(s.word[0], kPhiloxM0);          // blocks 2, 3
  const uint64x2_t product1_low = vmull_n_u32(vget_low_u32(s.word[2]), kPhiloxM1);
  const uint64x2_t product1_high = vmull_high_n_u32(s.word[2], kPhiloxM1);
  const uint32x4_t lo0 = vuzp1q_u32(vreinterpretq_u32_u64(product0_low), vreinterpretq_u32_u64(product0_high));
  const uint32x4_t hi0 = vuzp2q_u32(vreinterpretq_u32_u64(product0_low), vreinterpretq_u32_u64(product0_high));
  const uint32x4_t lo1 = vuzp1q_u32(vreinterpretq_u32_u64(product1_low), vreinterpretq_u32_u64(product1_high));
  const uint32x4_t hi1 = vuzp2q_u32(vreinterpretq_u32_u64(product1_low), vreinterpretq_u32_u64(product1_high));
  s.word[0] = veorq_u32(veorq_u32(hi1, s.word[1]), k0);
  s.word[2] = veorq_u32(veorq_u32(hi0, s.word[3]), k1);
  s.word[1] = lo1;
  s.word[3] = lo0;
}

// Keep masks of a group (all-ones or zero 32-bit lanes), word-major like its blocks.
struct NeonKeep {
  uint32x4_t word[kWordsPerBlock];
};

template <typename Bits>
void store_kept_neon(const Bits* input, Bits* output, const NeonKeep (&keep)[kNeonGroups]) {
  if constexpr (sizeof(Bits) == 4) {
    for (int g = 0; g < kNeonGroups; ++g) {  // 16 elements per group
      uint32x4x4_t values = vld4q_u32(input + 16 * g);
      for (int j = 0; j < kWordsPerBlock; ++j) values.val[j] = vandq_u32(values.val[j], keep[g].word[j]);
      vst4q_u32(output + 16 * g, values);
    }
  } else if constexpr (sizeof(Bits) == 8) {
    for (int g = 0; g < kNeonGroups; ++g) {  // two blocks (8 elements) per LD4 of 64-bit lanes
      for (int half = 0; half < 2; ++half) {
        uint64x2x4_t values = vld4q_u64(input + 16 * g + 8 * half);
        for (int j = 0; j < kWordsPerBlock; ++j) {
          const int32x4_t keep32 = vreinterpretq_s32_u32(keep[g].word[j]);
          const int64x2_t keep64 = half == 0 ? vmovl_s32(vget_low_s32(keep32)) : vmovl_high_s32(keep32);
          values.val[j] = vandq_u64(values.val[j], vreinterpretq_u64_s64(keep64));
        }
        vst4q_u64(output + 16 * g + 8 * half, values);
      }
    }
  } else {
    // Narrow the masks: two groups fill eight 16-bit lanes, four groups sixteen 8-bit lanes.
    uint16x8_t keep16[2][kWordsPerBlock];
    for (int pair = 0; pair < 2; ++pair) {
      for (int j = 0; j < kWordsPerBlock; ++j) {
        keep16[pair][j] = vcombine_u16(vmovn_u32(keep[2 * pair].word[j]), vmovn_u32(keep[2 * pair + 1].word[j]));
      }
    }
    if constexpr (sizeof(Bits) == 2) {
      for (int pair = 0; pair < 2; ++pair) {  // 32 elements per pair of groups
        uint16x8x4_t values = vld4q_u16(input + 32 * pair);
        for (int j = 0; j < kWordsPerBlock; ++j) values.val[j] = vandq_u16(values.val[j], keep16[pair][j]);
        vst4q_u16(output + 32 * pair, values);
      }
    } else {
      uint8x16x4_t values = vld4q_u8(input);  // all 64 elements
      for (int j = 0; j < kWordsPerBlock; ++j) {
        values.val[j] = vandq_u8(values.val[j], vcombine_u8(vmovn_u16(keep16[0][j]), vmovn_u16(keep16[1][j])));
      }
      vst4q_u8(output, values);
    }
  }
}

template <typename Bits>
void masked_copy_steps_neon(const Bits* input, Bits* output, uint64_t first_block, int64_t steps,
                            const MaskKey& key) {
  uint32x4_t round_k0[kPhiloxRounds], round_k1[kPhiloxRounds];
  uint32_t k0 = low_word(key.seed), k1 = high_word(key.seed);
  for (int round = 0; round < kPhiloxRounds; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1) {
    round_k0[round] = vdupq_n_u32(k0);
    round_k1[round] = vdupq_n_u32(k1);
  }
  const uint32x4_t offset_low = vdupq_n_u32(low_word(key.offset));
  const uint32x4_t offset_high = vdupq_n_u32(high_word(key.offset));
  const uint32_t threshold32 = key.threshold > 0xffffffffu ? 0xffffffffu : static_cast<uint32_t>(key.threshold);
  const uint32x4_t threshold = vdupq_n_u32(threshold32);
  const uint32x4_t keep_all = vdupq_n_u32(key.threshold > 0xffffffffu ? 0xffffffffu : 0);  // p = 1
  // 64-bit block indices of lanes (0, 1) and (2, 3) of the next group.
  const uint64_t first[2][2] = {{first_block, first_block + 1}, {first_block + 2, first_block + 3}};
  uint64x2_t blocks_low = vld1q_u64(first[0]);
  uint64x2_t blocks_high = vld1q_u64(first[1]);
  const uint64x2_t four_blocks = vdupq_n_u64(4);

  for (int64_t step = 0; step < steps; ++step) {
    NeonBlocks state[kNeonGroups];
    for (int g = 0; g < kNeonGroups; ++g) {
      state[g].word[0] = vuzp1q_u32(vreinterpretq_u32_u64(blocks_low), vreinterpretq_u32_u64(blocks_high));
      state[g].word[1] = vuzp2q_u32(vreinterpretq_u32_u64(blocks_low), vreinterpretq_u32_u64(blocks_high));
      state[g].word[2] = offset_low;
      state[g].word[3] = offset_high;
      blocks_low = vaddq_u64(blocks_low, four_blocks);
      blocks_high = vaddq_u64(blocks_high, four_blocks);
    }
    for (int round = 0; round < kPhiloxRounds; ++round) {
      for (int g = 0; g < kNeonGroups; ++g) philox_round_neon(state[g], round_k0[round], round_k1[round]);
    }
    NeonKeep keep[kNeonGroups];
    for (int g = 0; g < kNeonGroups; ++g) {
      for (int j = 0; j < kWordsPerBlock; ++j) {
        keep[g].word[j] = vorrq_u32(vcltq_u32(state[g].word[j], threshold), keep_all);
      }
    }
    store_kept_neon(input + step * kNeonStepElements, output + step * kNeonStepElements, keep);
  }
}
#endif  // __aarch64__

template <typename Bits>
void masked_copy_with(CpuIsa isa, const Bits* input, Bits* output, int64_t begin, int64_t end,
                      uint64_t element_offset, const MaskKey& key) {
  switch (isa) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      return masked_copy_vectorized<Bits, kAvx512StepElements, masked_copy_steps_avx512<Bits>>(
          input, output, begin, end, element_offset, key);
    case CpuIsa::kAvx2:
      return masked_copy_vectorized<Bits, kAvx2StepElements, masked_copy_steps_avx2<Bits>>(
          input, output, begin, end, element_offset, key);
#endif
#if defined(__aarch64__)
    case CpuIsa::kNeon:
      return masked_copy_vectorized<Bits, kNeonStepElements, masked_copy_steps_neon<Bits>>(
          input, output, begin, end, element_offset, key);
#endif
    default:
      return masked_copy_vectorized<Bits, kPortableStepElements, masked_copy_steps_portable<Bits>>(
          input, output, begin, end, element_offset, key);
  }
}

}  // namespace

void masked_copy_range(CpuIsa isa, const void* input, void* output, int element_size,
                       int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key) {
  visit_element_bits(element_size, [&](auto bits) {
    using Bits = decltype(bits);
    masked_copy_with(isa, static_cast<const Bits*>(input), static_cast<Bits*>(output), begin, end,
                     element_offset, key);
  });
}

}  // namespace tinybig_cuda
