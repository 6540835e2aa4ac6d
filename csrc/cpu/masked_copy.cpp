#include "masked_copy.h"

#include <atomic>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>

#include "philox_avx2.h"
#endif

namespace tinybig_cuda {
namespace {

template <typename Bits>
void masked_copy_scalar(const Bits* input, Bits* output, int64_t begin, int64_t end,
                        uint64_t element_offset, const MaskKey& key) {
  int64_t k = begin;
  while (k < end) {
    const uint64_t global = element_offset + static_cast<uint64_t>(k);
    const PhiloxWords words = mask_block_words(global / kWordsPerBlock, key);
    for (uint64_t w = global % kWordsPerBlock; w < kWordsPerBlock && k < end; ++w, ++k) {
      output[k] = keeps(words.word[w], key.threshold) ? input[k] : Bits(0);
    }
  }
}

// Runs the scalar path on the partial blocks at either end of [begin, end) and `vector_steps`
// on the whole ones between, `kStepElements` elements (a multiple of 4, block-aligned) at a time.
template <typename Bits, int64_t kStepElements,
          void (*vector_steps)(const Bits*, Bits*, uint64_t, int64_t, const MaskKey&)>
void masked_copy_vectorized(const Bits* input, Bits* output, int64_t begin, int64_t end,
                            uint64_t element_offset, const MaskKey& key) {
  const uint64_t first_whole_block = (element_offset + begin + kWordsPerBlock - 1) / kWordsPerBlock;
  const int64_t vector_begin = static_cast<int64_t>(first_whole_block * kWordsPerBlock - element_offset);
  const int64_t steps = vector_begin < end ? (end - vector_begin) / kStepElements : 0;
  if (steps == 0) return masked_copy_scalar(input, output, begin, end, element_offset, key);
  const int64_t vector_end = vector_begin + steps * kStepElements;
  masked_copy_scalar(input, output, begin, vector_begin, element_offset, key);
  vector_steps(input + vector_begin, output + vector_begin, first_whole_block, steps, key);
  masked_copy_scalar(input, output, vector_end, end, element_offset, key);
}

#if defined(__x86_64__)
// The AVX-512 path arranges Philox as the AVX2 one does (philox_avx2.h), 16 elements to a vector.
constexpr int kVectorsInFlight = 4;

#define TINYBIG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

constexpr int64_t kAvx512StepElements = kVectorsInFlight * 16;

template <typename Bits>
TINYBIG_AVX512 inline void store_kept_avx512(const Bits* input, Bits* output, __mmask16 keep) {
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
TINYBIG_AVX512 void masked_copy_steps_avx512(const Bits* input, Bits* output, uint64_t first_block,
                                             int64_t steps, const MaskKey& key) {
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
    __m512i state[kVectorsInFlight];
    for (int v = 0; v < kVectorsInFlight; ++v) {
      state[v] = counter;
      counter = _mm512_add_epi64(counter, four_blocks);
    }
    for (int round = 0; round < kPhiloxRounds; ++round) {
      for (int v = 0; v < kVectorsInFlight; ++v) {
        const __m512i products = _mm512_mul_epu32(state[v], multipliers);
        state[v] = _mm512_ternarylogic_epi32(  // 0x96: a ^ b ^ c
            _mm512_shuffle_epi32(products, static_cast<_MM_PERM_ENUM>(kPhiloxShuffle)),
            _mm512_srli_epi64(state[v], 32), round_keys[round], 0x96);
      }
    }
    const int64_t first = step * kAvx512StepElements;
    for (int v = 0; v < kVectorsInFlight; ++v) {
      const __mmask16 keep = _mm512_cmplt_epu32_mask(state[v], threshold) | keep_all;
      store_kept_avx512(input + first + 16 * v, output + first + 16 * v, keep);
    }
  }
}

// AVX2 masks are vectors of all-ones or zero 32-bit lanes; narrow or widen them to the element.
template <typename Bits>
TINYBIG_AVX2 inline void store_kept_avx2(const Bits* input, Bits* output, __m256i keep) {
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
  TINYBIG_AVX2 inline void operator()(int64_t element, __m256i keep) const {
    store_kept_avx2(input + element, output + element, keep);
  }
};

template <typename Bits>
TINYBIG_AVX2 void masked_copy_steps_avx2(const Bits* input, Bits* output, uint64_t first_block,
                                         int64_t steps, const MaskKey& key) {
  StoreKeptAvx2<Bits> store{input, output};
  philox_keep_steps_avx2(first_block, steps, key, store);
}
#endif  // __x86_64__

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
    default:
      return masked_copy_scalar(input, output, begin, end, element_offset, key);
  }
}

std::atomic<CpuIsa> forced_isa{CpuIsa::kScalar};
std::atomic<bool> isa_forced{false};

CpuIsa best_supported_isa() {
  CpuIsa best = CpuIsa::kScalar;
  for (const CpuIsa isa : kAllCpuIsas) {
    if (cpu_supports(isa)) best = isa;
  }
  return best;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "unknown";
}

CpuIsa cpu_isa_from_name(const std::string& name) {
  for (const CpuIsa isa : kAllCpuIsas) {
    if (name == cpu_isa_name(isa)) return isa;
  }
  throw std::invalid_argument("set_cpu_isa: expected name to be 'auto', 'scalar', 'avx2' or 'avx512', but got '" +
                              name + "'");
}

bool cpu_supports(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
#if defined(__x86_64__)
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

CpuIsa active_cpu_isa() {
  return isa_forced.load() ? forced_isa.load() : best_supported_isa();
}

void set_active_cpu_isa(CpuIsa isa) {
  if (!cpu_supports(isa)) {
    throw std::invalid_argument(std::string("this CPU does not support the '") +
                                cpu_isa_name(isa) + "' path");
  }
  forced_isa.store(isa);
  isa_forced.store(true);
}

void use_best_cpu_isa() { isa_forced.store(false); }

void masked_copy_range(CpuIsa isa, const void* input, void* output, int element_size,
                       int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key) {
  switch (element_size) {
    case 1:
      return masked_copy_with(isa, static_cast<const uint8_t*>(input), static_cast<uint8_t*>(output),
                              begin, end, element_offset, key);
    case 2:
      return masked_copy_with(isa, static_cast<const uint16_t*>(input),
                              static_cast<uint16_t*>(output), begin, end, element_offset, key);
    case 4:
      return masked_copy_with(isa, static_cast<const uint32_t*>(input),
                              static_cast<uint32_t*>(output), begin, end, element_offset, key);
    case 8:
      return masked_copy_with(isa, static_cast<const uint64_t*>(input),
                              static_cast<uint64_t*>(output), begin, end, element_offset, key);
    default:
      throw std::invalid_argument("masked_copy_range: element_size must be 1, 2, 4 or 8");
  }
}

}  // namespace tinybig_cuda
