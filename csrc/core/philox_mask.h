// The mask definition of docs/contract.md ('Mask definition', 'Keep threshold') in one place:
// Philox4x32-10 and the Bernoulli keep test.
//
// Everything here is plain C++ that also compiles as CUDA __host__ __device__ code, so the
// CPU kernels, the CUDA kernel and the torch-free C++ tests all run these same lines.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TINYBIG_HOST_DEVICE __host__ __device__ __forceinline__
#define TINYBIG_UNROLL _Pragma("unroll")
#else
#define TINYBIG_HOST_DEVICE inline
#define TINYBIG_UNROLL _Pragma("GCC unroll 16")
#endif

namespace tinybig_cuda {

// Random123's Philox4x32 multipliers and Weyl key increments.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// One Philox block: four 32-bit words, which mask four consecutive elements.
constexpr int kWordsPerBlock = 4;

struct PhiloxWords {
  uint32_t word[kWordsPerBlock];
};

TINYBIG_HOST_DEVICE uint32_t high_word(uint64_t x) { return static_cast<uint32_t>(x >> 32); }
TINYBIG_HOST_DEVICE uint32_t low_word(uint64_t x) { return static_cast<uint32_t>(x); }

// Philox4x32-10 of Salmon et al. (SC'11) on counter (c0, c1, c2, c3) and key (k0, k1).
TINYBIG_HOST_DEVICE PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                              uint32_t k0, uint32_t k1) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {  // the first round uses the key as given
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t next0 = high_word(product1) ^ c1 ^ k0;
    const uint32_t next2 = high_word(product0) ^ c3 ^ k1;
    c1 = low_word(product1);
    c3 = low_word(product0);
    c0 = next0;
    c2 = next2;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// Everything the mask depends on, as the kernels consume it.
struct MaskKey {
  uint64_t seed;       // rng_state[0] read as unsigned: the Philox key
  uint64_t offset;     // rng_state[1] read as unsigned: the upper half of the counter
  uint64_t threshold;  // keep_threshold(p), in [0, 2**32]
};

// Where a launch finds the mask's seed and offset: in device memory, read by the kernel (a CUDA
// rng_state: a CUDA graph replays with the state's value at replay), or by value (a CPU one,
// which the host reads without waiting for the device).
struct MaskKeySource {
  const int64_t* device_state;  // [seed, offset] on the device, or null
  MaskKey key;                  // key.seed and key.offset are read only when device_state is null
};

TINYBIG_HOST_DEVICE MaskKey resolve_mask_key(const MaskKeySource& source) {
  if (source.device_state == nullptr) return source.key;
  return MaskKey{static_cast<uint64_t>(source.device_state[0]),
                 static_cast<uint64_t>(source.device_state[1]), source.key.threshold};
}

// floor(p * 2**32): word < threshold keeps an element with probability exactly threshold / 2**32.
// Scaling by a power of two is exact in double, so host code anywhere computes the same integer.
inline uint64_t keep_threshold(double p) {
  return static_cast<uint64_t>(std::floor(p * 4294967296.0));
}

// The four words that decide elements 4*block .. 4*block+3 (flat, row-major, global indices).
TINYBIG_HOST_DEVICE PhiloxWords mask_block_words(uint64_t block, const MaskKey& key) {
  return philox4x32_10(low_word(block), high_word(block), low_word(key.offset),
                       high_word(key.offset), low_word(key.seed), high_word(key.seed));
}

// The keep test. Compared in 64 bits so threshold 2**32 (p = 1) keeps every word.
TINYBIG_HOST_DEVICE bool keeps(uint32_t word, uint64_t threshold) {
  return static_cast<uint64_t>(word) < threshold;
}

// Is global element `index` kept? The slow, obviously-correct form, one block per element.
TINYBIG_HOST_DEVICE bool keeps_element(uint64_t index, const MaskKey& key) {
  const PhiloxWords words = mask_block_words(index / kWordsPerBlock, key);
  return keeps(words.word[index % kWordsPerBlock], key.threshold);
}

}  // namespace tinybig_cuda
