#include "core/cpu/masked_matvec.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>

#include "core/cpu/philox_avx2.h"
#include "core/cpu/philox_avx512.h"
#endif

namespace tinybig_cuda {

bool masked_matvec_supports(CpuIsa isa) {
#if defined(__x86_64__)
  return isa == CpuIsa::kAvx2 || isa == CpuIsa::kAvx512;
#else
  (void)isa;
  return false;
#endif
}

#if defined(__x86_64__)
namespace {

template <typename Scalar, int kBatch>
using Rows = const Scalar* [kBatch];  // one pointer per row of x

// sums[b] += the masked dot product of elements [begin, end) of a row of w (its first element
// being global element `first`) with row b of x, one Philox block at a time: a row's first
// partial block.
template <typename Scalar, int kBatch>
void masked_dot_blockwise(const Scalar* w, const Rows<Scalar, kBatch>& x, int64_t begin, int64_t end,
                          uint64_t first, const MaskKey& key, Scalar (&sums)[kBatch]) {
  for (int64_t k = begin; k < end;) {
    const uint64_t global = first + static_cast<uint64_t>(k);
    const PhiloxWords words = mask_block_words(global / kWordsPerBlock, key);
    for (uint64_t j = global % kWordsPerBlock; j < kWordsPerBlock && k < end; ++j, ++k) {
      const Scalar kept = keeps(words.word[j], key.threshold) ? w[k] : Scalar(0);
      for (int b = 0; b < kBatch; ++b) sums[b] += kept * x[b][k];
    }
  }
}

// The vector types of each element type (as member types: a vector type as a template argument
// loses its alignment attribute).
template <typename Scalar>
struct VectorOf;
template <>
struct VectorOf<float> {
  using Avx512 = __m512;
  using Avx2 = __m256;
};
template <>
struct VectorOf<double> {
  using Avx512 = __m512d;
  using Avx2 = __m256d;
};

// The Philox arithmetic paces the loop so slowly that the hardware prefetchers fall behind on a
// weight in main memory (the fused loop ran 30% slower than on a weight in cache, on a Xeon with
// AVX-512); asking for each line 2 KiB ahead of its use brings it back to the in-cache rate.
// Prefetches never fault, so reading ahead past the end of w is harmless.
constexpr int kPrefetchBytes = 2048;
constexpr int kCacheLineBytes = 64;

template <int kBytes>
inline void prefetch_ahead(const void* data) {
  for (int line = 0; line < kBytes; line += kCacheLineBytes) {
    _mm_prefetch(static_cast<const char*>(data) + kPrefetchBytes + line, _MM_HINT_T0);
  }
}

// The consumers of philox_avx512.h and philox_avx2.h: each vector of keep bits selects its
// elements of w (the dropped ones become +0.0), which are multiplied into one accumulator per row
// of x. w and x point at the first element of the run of whole blocks.
template <typename Scalar, int kBatch>
struct MaskedDotAvx512 {
  using Vector = typename VectorOf<Scalar>::Avx512;
  const Scalar* w;
  const Scalar* x[kBatch];
  Vector sum[kBatch];

  TINYBIG_TARGET_AVX512 inline void operator()(int64_t element, __mmask16 keep) {
    prefetch_ahead<16 * sizeof(Scalar)>(w + element);
    if constexpr (std::is_same_v<Scalar, float>) {
      const __m512 kept = _mm512_maskz_loadu_ps(keep, w + element);
      for (int b = 0; b < kBatch; ++b) sum[b] = _mm512_fmadd_ps(kept, _mm512_loadu_ps(x[b] + element), sum[b]);
    } else {
      const __m512d low = _mm512_maskz_loadu_pd(static_cast<__mmask8>(keep), w + element);
      const __m512d high = _mm512_maskz_loadu_pd(static_cast<__mmask8>(keep >> 8), w + element + 8);
      for (int b = 0; b < kBatch; ++b) {
        sum[b] = _mm512_fmadd_pd(low, _mm512_loadu_pd(x[b] + element), sum[b]);
        sum[b] = _mm512_fmadd_pd(high, _mm512_loadu_pd(x[b] + element + 8), sum[b]);
      }
    }
  }
};

// noipa: GCC 12 would otherwise clone it for the rest's single step, and then report its bug
// 105593 (the intrinsics' internal _mm512_undefined) as a definite -Wuninitialized.
template <typename Scalar, int kBatch>
TINYBIG_TARGET_AVX512 __attribute__((noipa)) void masked_dot_steps_avx512(const Scalar* w, const Rows<Scalar, kBatch>& x, uint64_t first_block,
                                                   int64_t steps, const MaskKey& key, Scalar (&sums)[kBatch]) {
  MaskedDotAvx512<Scalar, kBatch> dot;
  dot.w = w;
  for (int b = 0; b < kBatch; ++b) {
    dot.x[b] = x[b];
    if constexpr (std::is_same_v<Scalar, float>) {
      dot.sum[b] = _mm512_setzero_ps();
    } else {
      dot.sum[b] = _mm512_setzero_pd();
    }
  }
  philox_keep_steps_avx512(first_block, steps, key, dot);
  // Lane by lane through memory: GCC 12 warns (-Wuninitialized) inside _mm512_reduce_add_pd.
  constexpr int kLanes = 64 / sizeof(Scalar);
  for (int b = 0; b < kBatch; ++b) {
    alignas(64) Scalar lanes[kLanes];
    if constexpr (std::is_same_v<Scalar, float>) {
      _mm512_store_ps(lanes, dot.sum[b]);
    } else {
      _mm512_store_pd(lanes, dot.sum[b]);
    }
    for (int lane = 0; lane < kLanes; ++lane) sums[b] += lanes[lane];
  }
}

// AVX2 keep masks are all-ones or zero 32-bit lanes (and without FMA in the AVX2 target, a
// multiply and an add).
template <typename Scalar, int kBatch>
struct MaskedDotAvx2 {
  using Vector = typename VectorOf<Scalar>::Avx2;
  const Scalar* w;
  const Scalar* x[kBatch];
  Vector sum[kBatch];

  TINYBIG_TARGET_AVX2 inline void operator()(int64_t element, __m256i keep) {
    if (element % (kCacheLineBytes / sizeof(Scalar)) == 0) prefetch_ahead<8 * sizeof(Scalar)>(w + element);
    if constexpr (std::is_same_v<Scalar, float>) {
      const __m256 kept = _mm256_and_ps(_mm256_loadu_ps(w + element), _mm256_castsi256_ps(keep));
      for (int b = 0; b < kBatch; ++b) {
        sum[b] = _mm256_add_ps(sum[b], _mm256_mul_ps(kept, _mm256_loadu_ps(x[b] + element)));
      }
    } else {
      const __m256d keep_low = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep)));
      const __m256d keep_high = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1)));
      const __m256d low = _mm256_and_pd(_mm256_loadu_pd(w + element), keep_low);
      const __m256d high = _mm256_and_pd(_mm256_loadu_pd(w + element + 4), keep_high);
      for (int b = 0; b < kBatch; ++b) {
        sum[b] = _mm256_add_pd(sum[b], _mm256_mul_pd(low, _mm256_loadu_pd(x[b] + element)));
        sum[b] = _mm256_add_pd(sum[b], _mm256_mul_pd(high, _mm256_loadu_pd(x[b] + element + 4)));
      }
    }
  }
};

template <typename Scalar, int kBatch>
TINYBIG_TARGET_AVX2 void masked_dot_steps_avx2(const Scalar* w, const Rows<Scalar, kBatch>& x, uint64_t first_block,
                                               int64_t steps, const MaskKey& key, Scalar (&sums)[kBatch]) {
  MaskedDotAvx2<Scalar, kBatch> dot;
  dot.w = w;
  for (int b = 0; b < kBatch; ++b) {
    dot.x[b] = x[b];
    if constexpr (std::is_same_v<Scalar, float>) {
      dot.sum[b] = _mm256_setzero_ps();
    } else {
      dot.sum[b] = _mm256_setzero_pd();
    }
  }
  philox_keep_steps_avx2(first_block, steps, key, dot);
  constexpr int kLanes = 32 / sizeof(Scalar);
  for (int b = 0; b < kBatch; ++b) {
    alignas(32) Scalar lanes[kLanes];
    if constexpr (std::is_same_v<Scalar, float>) {
      _mm256_store_ps(lanes, dot.sum[b]);
    } else {
      _mm256_store_pd(lanes, dot.sum[b]);
    }
    for (int lane = 0; lane < kLanes; ++lane) sums[b] += lanes[lane];
  }
}

template <typename Scalar, int kBatch>
using DotSteps = void (*)(const Scalar*, const Rows<Scalar, kBatch>&, uint64_t, int64_t, const MaskKey&,
                          Scalar (&)[kBatch]);

// Each row: its first partial block one block at a time, then whole blocks kStepElements at a
// time, then the rest (fewer than kStepElements elements) as one more step over copies padded with
// zeros: a zero weight adds nothing, whatever its keep bit, and nothing is read past the row.
template <typename Scalar, int kBatch, int64_t kStepElements, DotSteps<Scalar, kBatch> dot_steps>
void masked_matvec_rows_with(const Scalar* w, int64_t in_features, int64_t row_begin, int64_t row_end,
                             const Scalar* x, int64_t x_stride, Scalar* y, int64_t y_stride, const MaskKey& key) {
  Rows<Scalar, kBatch> x_rows;
  for (int b = 0; b < kBatch; ++b) x_rows[b] = x + b * x_stride;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const Scalar* w_row = w + r * in_features;
    const uint64_t first = static_cast<uint64_t>(r) * static_cast<uint64_t>(in_features);
    Scalar sums[kBatch] = {};
    const int64_t head =
        std::min(in_features, static_cast<int64_t>((kWordsPerBlock - first % kWordsPerBlock) % kWordsPerBlock));
    masked_dot_blockwise<Scalar, kBatch>(w_row, x_rows, 0, head, first, key, sums);

    const uint64_t first_block = (first + static_cast<uint64_t>(head)) / kWordsPerBlock;
    const int64_t steps = (in_features - head) / kStepElements;
    Rows<Scalar, kBatch> x_at;
    for (int b = 0; b < kBatch; ++b) x_at[b] = x_rows[b] + head;
    if (steps > 0) dot_steps(w_row + head, x_at, first_block, steps, key, sums);

    const int64_t done = head + steps * kStepElements;
    if (done < in_features) {
      alignas(64) Scalar w_rest[kStepElements] = {};
      alignas(64) Scalar x_rest[kBatch][kStepElements] = {};
      std::copy(w_row + done, w_row + in_features, w_rest);
      Rows<Scalar, kBatch> x_rest_rows;
      for (int b = 0; b < kBatch; ++b) {
        std::copy(x_rows[b] + done, x_rows[b] + in_features, x_rest[b]);
        x_rest_rows[b] = x_rest[b];
      }
      const uint64_t rest_block = first_block + static_cast<uint64_t>(steps * (kStepElements / kWordsPerBlock));
      dot_steps(w_rest, x_rest_rows, rest_block, 1, key, sums);
    }
    for (int b = 0; b < kBatch; ++b) y[b * y_stride + r] = sums[b];
  }
}

template <typename Scalar, int kBatch>
void masked_matvec_rows_batch(CpuIsa isa, const Scalar* w, int64_t in_features, int64_t row_begin, int64_t row_end,
                              const Scalar* x, int64_t x_stride, Scalar* y, int64_t y_stride, const MaskKey& key) {
  if (isa == CpuIsa::kAvx512) {
    masked_matvec_rows_with<Scalar, kBatch, kAvx512StepElements, masked_dot_steps_avx512<Scalar, kBatch>>(
        w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
  } else {
    masked_matvec_rows_with<Scalar, kBatch, kAvx2StepElements, masked_dot_steps_avx2<Scalar, kBatch>>(
        w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
  }
}

}  // namespace
#endif  // __x86_64__

template <typename Scalar>
void masked_matvec_rows(CpuIsa isa, const Scalar* w, int64_t in_features, int64_t row_begin, int64_t row_end,
                        const Scalar* x, int64_t x_stride, int64_t batch, Scalar* y, int64_t y_stride,
                        const MaskKey& key) {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  if (!masked_matvec_supports(isa) || batch < 1 || batch > kMaskedMatvecMaxBatch) {
    throw std::invalid_argument("masked_matvec_rows: needs an AVX2 or AVX-512 path and a batch of 1 to 4");
  }
#if defined(__x86_64__)
  switch (batch) {
    case 1:
      return masked_matvec_rows_batch<Scalar, 1>(isa, w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
    case 2:
      return masked_matvec_rows_batch<Scalar, 2>(isa, w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
    case 3:
      return masked_matvec_rows_batch<Scalar, 3>(isa, w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
    default:
      return masked_matvec_rows_batch<Scalar, 4>(isa, w, in_features, row_begin, row_end, x, x_stride, y, y_stride, key);
  }
#else
  (void)w, (void)in_features, (void)row_begin, (void)row_end, (void)x, (void)x_stride, (void)y, (void)y_stride,
      (void)key;
#endif
}

template void masked_matvec_rows<float>(CpuIsa, const float*, int64_t, int64_t, int64_t, const float*, int64_t,
                                        int64_t, float*, int64_t, const MaskKey&);
template void masked_matvec_rows<double>(CpuIsa, const double*, int64_t, int64_t, int64_t, const double*, int64_t,
                                         int64_t, double*, int64_t, const MaskKey&);

}  // namespace tinybig_cuda
