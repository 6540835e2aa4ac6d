// The AVX-512 Philox of the CPU kernels, shared by the masked copy and the compact ops as
// philox_avx2.h is: it generates the keep mask of whole Philox blocks, 16 elements to a vector,
// and hands each vector's keep bits to a consumer, which copies (masked_copy.cpp) or expands,
// compresses and counts (compact_ranges.cpp) with them while they are in a mask register.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "core/cpu/isa.h"
#include "core/cpu/philox_avx2.h"  // kPhiloxShuffle: the blocks lie in 128-bit lanes as on AVX2
#include "core/philox_mask.h"

namespace tinybig_cuda {

constexpr int kAvx512VectorsInFlight = 4;
constexpr int64_t kAvx512StepElements = kAvx512VectorsInFlight * 16;

// For each of `steps` steps of kAvx512StepElements elements from block `first_block` on, calls
// consume(element, keep) for its vectors in order: element counts from the first block's first
// element, bit j of keep is set iff element element + j is kept. Consume's call operator must be
// inline and compiled for at least TINYBIG_TARGET_AVX512.
template <typename Consume>
TINYBIG_TARGET_AVX512 inline void philox_keep_steps_avx512(uint64_t first_block, int64_t steps, const MaskKey& key,
                                                           Consume& consume) {
  const long long offset = static_cast<long long>(key.offset);
  const __m512i multipliers = _mm512_set_epi64(kPhiloxM1, kPhiloxM0, kPhiloxM1, kPhiloxM0,
                                               kPhiloxM1, kPhiloxM0, kPhiloxM1, kPhiloxM0);
  __m512i round_keys[kPhiloxRounds];
  uint32_t k0 = low_word(key.seed), k1 = high_word(key.seed);
  for (int round = 0; round < kPhiloxRounds; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1) {
    round_keys[round] = _mm512_set_epi64(k1, k0, k1, k0, k1, k0, k1, k0);
  }
  const __m512i threshold = _mm512_set1_epi32(static_cast<int>(key.threshold > 0xffffffffu ? 0xffffffffu : key.threshold));
  const __mmask16 keep_all = key.threshold > 0xffffffffu ? 0xffff : 0;  // p = 1
  const __m512i four_blocks = _mm512_set_epi64(0, 4, 0, 4, 0, 4, 0, 4);
  const long long b = static_cast<long long>(first_block);
  __m512i counter = _mm512_set_epi64(offset, b + 3, offset, b + 2, offset, b + 1, offset, b);

  for (int64_t step = 0; step < steps; ++step) {
    __m512i state[kAvx512VectorsInFlight];
    for (int v = 0; v < kAvx512VectorsInFlight; ++v) {
      state[v] = counter;
      counter = _mm512_add_epi64(counter, four_blocks);
    }
    for (int round = 0; round < kPhiloxRounds; ++round) {
      for (int v = 0; v < kAvx512VectorsInFlight; ++v) {
        const __m512i products = _mm512_mul_epu32(state[v], multipliers);
        state[v] = _mm512_ternarylogic_epi32(  // 0x96: a ^ b ^ c
            _mm512_shuffle_epi32(products, static_cast<_MM_PERM_ENUM>(kPhiloxShuffle)),
            _mm512_srli_epi64(state[v], 32), round_keys[round], 0x96);
      }
    }
    for (int v = 0; v < kAvx512VectorsInFlight; ++v) {
      consume(step * kAvx512StepElements + 16 * v, static_cast<__mmask16>(_mm512_cmplt_epu32_mask(state[v], threshold) | keep_all));
    }
  }
}

}  // namespace tinybig_cuda

#endif  // __x86_64__
