// The CUDA masked matrix-vector product's per-lane work, as a host+device function so the C++
// tests can run every lane of a simulated launch on the host: masked_linear's small batches on a
// GPU, where the product reads w once and the mask is drawn as each block of w arrives (the CPU's
// is core/cpu/masked_matvec.h). A team of lanes (a warp) shares one row of w: lane i takes the
// row's Philox blocks i, i + team, i + 2 team, ..., so the team reads the row's consecutive
// elements together, and the lanes' partial sums are then added (a warp shuffle on the device).
#pragma once

#include <cstdint>

#include "core/philox_mask.h"

namespace tinybig_cuda {

// The most rows of x one launch takes, as on the CPU: one accumulator per row of x in each lane.
constexpr int kCudaMaskedMatvecMaxBatch = 4;

template <typename Scalar>
struct MaskedMatvecArgs {
  const Scalar* w;       // (out_features, in_features), row-major
  const Scalar* x;       // `batch` rows of in_features elements, x_stride elements apart
  Scalar* y;             // `batch` rows of out_features elements, y_stride elements apart
  int64_t out_features;
  int64_t in_features;
  int64_t x_stride;
  int64_t y_stride;
};

// sums[b] += lane's share of sum over c of keep(row * in_features + c) * w[row, c] * x[b, c]: the
// words of each of its blocks that fall inside the row (a row that does not start or end on a
// block boundary shares its end blocks with its neighbours). A dropped weight counts as zero.
template <typename Scalar, int kBatch>
TINYBIG_HOST_DEVICE void masked_matvec_lane(const MaskedMatvecArgs<Scalar>& args, const MaskKey& key, int64_t row,
                                            unsigned lane, unsigned team, Scalar (&sums)[kBatch]) {
  const uint64_t first = static_cast<uint64_t>(row) * static_cast<uint64_t>(args.in_features);
  const uint64_t end = first + static_cast<uint64_t>(args.in_features);
  for (uint64_t block = first / kWordsPerBlock + lane; block * kWordsPerBlock < end; block += team) {
    const PhiloxWords words = mask_block_words(block, key);
TINYBIG_UNROLL
    for (int word = 0; word < kWordsPerBlock; ++word) {
      const uint64_t global = block * kWordsPerBlock + word;
      if (global < first || global >= end) continue;
      const Scalar kept = keeps(words.word[word], key.threshold) ? args.w[global] : Scalar(0);
      const int64_t column = static_cast<int64_t>(global - first);
TINYBIG_UNROLL
      for (int b = 0; b < kBatch; ++b) sums[b] += kept * args.x[b * args.x_stride + column];
    }
  }
}

}  // namespace tinybig_cuda
