// Runs the CUDA masked matrix-vector product's per-lane body (core/cuda/masked_matvec_body.h) on
// the host for every lane of simulated teams, adds the lanes' sums as the warp does, and checks
// the rows: one-hot rows of x read single weights out exactly (the mask is the contract's bit for
// bit, rows starting anywhere in a Philox block), random x agree with a long double sum of the
// definition, and a dropped NaN adds nothing.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "core/cuda/masked_matvec_body.h"

using namespace tinybig_cuda;

namespace {

// y as a launch with teams of `team` lanes computes it: every lane's sums of every row, added.
template <typename Scalar, int kBatch>
void simulated_launch(const MaskedMatvecArgs<Scalar>& args, const MaskKey& key, unsigned team) {
  for (int64_t row = 0; row < args.out_features; ++row) {
    Scalar total[kBatch] = {};
    for (unsigned lane = 0; lane < team; ++lane) {
      Scalar sums[kBatch] = {};
      masked_matvec_lane<Scalar, kBatch>(args, key, row, lane, team, sums);
      for (int b = 0; b < kBatch; ++b) total[b] += sums[b];
    }
    for (int b = 0; b < kBatch; ++b) args.y[b * args.y_stride + row] = total[b];
  }
}

template <typename Scalar, int kBatch>
void check_batch(unsigned team, std::mt19937_64& random) {
  const int64_t widths[] = {1, 3, 4, 5, 127, 128, 129, 1001};
  const uint64_t thresholds[] = {0, keep_threshold(0.37), uint64_t{1} << 31, uint64_t{1} << 32};
  std::normal_distribution<double> normal;
  for (const int64_t in_features : widths) {
    const int64_t out_features = 9, x_stride = in_features + 2, y_stride = out_features + 3;
    std::vector<Scalar> w(out_features * in_features), x(kBatch * x_stride), y(kBatch * y_stride);
    for (auto& value : w) value = static_cast<Scalar>(normal(random));
    for (const uint64_t threshold : thresholds) {
      const MaskKey key{random(), random(), threshold};
      MaskedMatvecArgs<Scalar> args{w.data(), x.data(), y.data(), out_features, in_features, x_stride, y_stride};

      std::fill(x.begin(), x.end(), Scalar(0));
      int64_t columns[kBatch];
      for (int b = 0; b < kBatch; ++b) {
        columns[b] = static_cast<int64_t>(random() % static_cast<uint64_t>(in_features));
        x[b * x_stride + columns[b]] = Scalar(1);
      }
      simulated_launch<Scalar, kBatch>(args, key, team);
      for (int b = 0; b < kBatch; ++b) {
        for (int64_t r = 0; r < out_features; ++r) {
          const uint64_t element = static_cast<uint64_t>(r * in_features + columns[b]);
          const Scalar expected = keeps_element(element, key) ? w[element] : Scalar(0);
          CHECK(y[b * y_stride + r] == expected, "%zu-byte, team %u: one-hot, in %lld, batch %d, row %lld",
                sizeof(Scalar), team, static_cast<long long>(in_features), kBatch, static_cast<long long>(r));
        }
      }

      std::vector<Scalar> w_nan(w);
      for (uint64_t i = 0; i < w.size(); ++i) {
        if (!keeps_element(i, key)) w_nan[i] = std::numeric_limits<Scalar>::quiet_NaN();
      }
      args.w = w_nan.data();
      for (auto& value : x) value = static_cast<Scalar>(normal(random));
      simulated_launch<Scalar, kBatch>(args, key, team);
      for (int b = 0; b < kBatch; ++b) {
        for (int64_t r = 0; r < out_features; ++r) {
          long double sum = 0, magnitude = 0;
          for (int64_t c = 0; c < in_features; ++c) {
            const uint64_t element = static_cast<uint64_t>(r * in_features + c);
            if (!keeps_element(element, key)) continue;
            const long double term = static_cast<long double>(w[element]) * x[b * x_stride + c];
            sum += term;
            magnitude += std::fabs(term);
          }
          const long double error = std::fabs(static_cast<long double>(y[b * y_stride + r]) - sum);
          const long double bound = 4 * in_features * std::numeric_limits<Scalar>::epsilon() * (magnitude + 1);
          CHECK(error <= bound, "%zu-byte, team %u: random, in %lld, batch %d, row %lld: %Lg vs %Lg", sizeof(Scalar),
                team, static_cast<long long>(in_features), kBatch, static_cast<long long>(r),
                static_cast<long double>(y[b * y_stride + r]), sum);
        }
      }
    }
  }
}

template <typename Scalar>
void check_scalar_type(std::mt19937_64& random) {
  for (const unsigned team : {32u, 1u, 3u}) {  // the warp, and odd teams: any team gives the same mask
    check_batch<Scalar, 1>(team, random);
    check_batch<Scalar, 2>(team, random);
    check_batch<Scalar, 3>(team, random);
    check_batch<Scalar, kCudaMaskedMatvecMaxBatch>(team, random);
  }
}

}  // namespace

int main() {
  std::mt19937_64 random(17);
  check_scalar_type<float>(random);
  check_scalar_type<double>(random);
  return test::finish("masked_matvec_simulated_cuda_launch");
}
