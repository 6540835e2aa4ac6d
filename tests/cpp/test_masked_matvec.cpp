// The fused masked matrix-vector product (core/cpu/masked_matvec.h) on every path this CPU has:
// one-hot rows of x read single weights out exactly, so the mask is the contract's bit for bit at
// every row start (aligned to a Philox block or not) and in every part of a row (first partial
// block, whole steps, the zero-padded rest); random x agree with a long double sum of the
// definition; a dropped NaN adds nothing.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "core/cpu/masked_matvec.h"

using namespace tinybig_cuda;

namespace {

template <typename Scalar>
void check_path(CpuIsa isa) {
  const int64_t widths[] = {1, 3, 5, 16, 63, 64, 65, 100, 129, 1000};
  const uint64_t thresholds[] = {0, keep_threshold(0.37), uint64_t{1} << 31, uint64_t{1} << 32};
  std::mt19937_64 random(13);
  std::normal_distribution<double> normal;
  for (const int64_t in_features : widths) {
    const int64_t out_features = 7, row_begin = 2, row_end = 7;  // rows from the middle, as a thread's share
    std::vector<Scalar> w(out_features * in_features);
    for (auto& value : w) value = static_cast<Scalar>(normal(random));
    for (const uint64_t threshold : thresholds) {
      const MaskKey key{random(), random(), threshold};
      for (int64_t batch = 1; batch <= kMaskedMatvecMaxBatch; ++batch) {
        const int64_t x_stride = in_features + 3;  // rows of x need not be packed
        const int64_t y_stride = out_features + 1;
        std::vector<Scalar> x(batch * x_stride), y(batch * y_stride, Scalar(-7));

        // One-hot rows: column c_b of each row, so y[b, r] is element (r, c_b) of the masked weight.
        std::vector<int64_t> columns(batch);
        for (int64_t b = 0; b < batch; ++b) {
          columns[b] = static_cast<int64_t>(random() % static_cast<uint64_t>(in_features));
          x[b * x_stride + columns[b]] = Scalar(1);
        }
        masked_matvec_rows<Scalar>(isa, w.data(), in_features, row_begin, row_end, x.data(), x_stride, batch,
                                   y.data(), y_stride, key);
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t r = 0; r < out_features; ++r) {
            const uint64_t element = static_cast<uint64_t>(r * in_features + columns[b]);
            const Scalar expected = r < row_begin || r >= row_end ? Scalar(-7)
                                    : keeps_element(element, key) ? w[element] : Scalar(0);
            CHECK(y[b * y_stride + r] == expected, "%s, %zu-byte: one-hot, in %lld, batch %lld, row %lld, column %lld",
                  cpu_isa_name(isa), sizeof(Scalar), static_cast<long long>(in_features), static_cast<long long>(batch),
                  static_cast<long long>(r), static_cast<long long>(columns[b]));
          }
        }

        // Random rows, against the definition summed in long double; the dropped weights made NaN.
        std::vector<Scalar> w_nan(w);
        for (uint64_t i = 0; i < w.size(); ++i) {
          if (!keeps_element(i, key)) w_nan[i] = std::numeric_limits<Scalar>::quiet_NaN();
        }
        for (auto& value : x) value = static_cast<Scalar>(normal(random));
        masked_matvec_rows<Scalar>(isa, w_nan.data(), in_features, row_begin, row_end, x.data(), x_stride, batch,
                                   y.data(), y_stride, key);
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t r = row_begin; r < row_end; ++r) {
            long double sum = 0, magnitude = 0;
            for (int64_t c = 0; c < in_features; ++c) {
              const uint64_t element = static_cast<uint64_t>(r * in_features + c);
              if (!keeps_element(element, key)) continue;
              sum += static_cast<long double>(w[element]) * x[b * x_stride + c];
              magnitude += std::fabs(static_cast<long double>(w[element]) * x[b * x_stride + c]);
            }
            const long double error = std::fabs(static_cast<long double>(y[b * y_stride + r]) - sum);
            const long double bound = 4 * in_features * std::numeric_limits<Scalar>::epsilon() * (magnitude + 1);
            CHECK(error <= bound, "%s, %zu-byte: random, in %lld, batch %lld, row %lld: %Lg vs %Lg",
                  cpu_isa_name(isa), sizeof(Scalar), static_cast<long long>(in_features),
                  static_cast<long long>(batch), static_cast<long long>(r),
                  static_cast<long double>(y[b * y_stride + r]), sum);
          }
        }
      }
    }
  }
}

}  // namespace

int main() {
  int paths = 0;
  for (const CpuIsa isa : kAllCpuIsas) {
    if (!masked_matvec_supports(isa)) continue;
    if (!cpu_supports(isa)) {
      std::printf("%s: not supported by this CPU, skipped\n", cpu_isa_name(isa));
      continue;
    }
    ++paths;
    check_path<float>(isa);
    check_path<double>(isa);
    std::printf("%s: checked\n", cpu_isa_name(isa));
  }
  CHECK(paths > 0 || !cpu_supports(CpuIsa::kAvx2), "no path was checked on a CPU with AVX2");
  return test::finish("masked_matvec");
}
