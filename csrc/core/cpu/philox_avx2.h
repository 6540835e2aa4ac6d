// The AVX2 Philox of the CPU kernels, shared by the masked copy and the compact ops: it generates
// the keep mask of whole Philox blocks, 8 elements to a vector, and hands each vector to a
// consumer, which copies (masked_copy.cpp) or scatters and gathers (compact_ranges.cpp) with it
// while it is still in registers.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "core/cpu/isa.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {

// Each Philox block stays in counter order inside one 128-bit lane (c0 c1 c2 c3), so the 64-bit
// lanes hold (block index, offset), one unsigned 32x32->64 multiply per 64-bit lane forms both
// products of a round, one shuffle puts them in place, and the words come out in element order.
// Four independent vectors are in flight to hide the multiply's latency.
constexpr int kAvx2VectorsInFlight = 4;
constexpr int64_t kAvx2StepElements = kAvx2VectorsInFlight * 8;
constexpr int kPhiloxShuffle = 0x1B;  // 32-bit lanes (3, 2, 1, 0) of each 128-bit lane

// For each of `steps` steps of kAvx2StepElements elements from block `first_block` on, calls
// consume(element, keep) for its vectors in order: element counts from the first block's first
// element, keep holds all-ones 32-bit lanes for the kept elements element..element+7, zero for
// the dropped ones. Consume's call operator must be TINYBIG_TARGET_AVX2 and inline.
template <typename Consume>
TINYBIG_TARGET_AVX2 inline void philox_keep_steps_avx2(uint64_t first_block, int64_t steps, const MaskKey& key,
                                                Consume& consume) {
  const long long offset = static_cast<long long>(key.offset);
  const __m256i multipliers = _mm256_set_epi64x(kPhiloxM1, kPhiloxM0, kPhiloxM1, kPhiloxM0);
  __m256i round_keys[kPhiloxRounds];
  uint32_t k0 = low_word(key.seed), k1 = high_word(key.seed);
  for (int round = 0; round < kPhiloxRounds; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1) {
    round_keys[round] = _mm256_set_epi64x(k1, k0, k1, k0);
  }
  // AVX2 compares only signed lanes: flipping the sign bit of both sides orders them unsigned.
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const uint32_t threshold32 = key.threshold > 0xffffffffu ? 0xffffffffu : static_cast<uint32_t>(key.threshold);
  const __m256i threshold = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(threshold32)), sign);
  const __m256i keep_all = _mm256_set1_epi32(key.threshold > 0xffffffffu ? -1 : 0);  // p = 1
  const __m256i two_blocks = _mm256_set_epi64x(0, 2, 0, 2);
  const long long b = static_cast<long long>(first_block);
  __m256i counter = _mm256_set_epi64x(offset, b + 1, offset, b);

  for (int64_t step = 0; step < steps; ++step) {
    __m256i state[kAvx2VectorsInFlight];
    for (int v = 0; v < kAvx2VectorsInFlight; ++v) {
      state[v] = counter;
      counter = _mm256_add_epi64(counter, two_blocks);
    }
    for (int round = 0; round < kPhiloxRounds; ++round) {
      for (int v = 0; v < kAvx2VectorsInFlight; ++v) {
        const __m256i products = _mm256_mul_epu32(state[v], multipliers);
        state[v] = _mm256_xor_si256(
            _mm256_xor_si256(_mm256_shuffle_epi32(products, kPhiloxShuffle), _mm256_srli_epi64(state[v], 32)),
            round_keys[round]);
      }
    }
    for (int v = 0; v < kAvx2VectorsInFlight; ++v) {
      const __m256i keep =
          _mm256_or_si256(_mm256_cmpgt_epi32(threshold, _mm256_xor_si256(state[v], sign)), keep_all);
      consume(step * kAvx2StepElements + 8 * v, keep);
    }
  }
}

}  // namespace tinybig_cuda

#endif  // __x86_64__
