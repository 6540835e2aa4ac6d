// The masked matrix-vector product of masked_linear's small batches, free of torch so the C++
// tests can run every instruction-set path: the mask is drawn while a row of w is read and
// multiplied, so the masked weight is never written, not even to a buffer in cache.
#pragma once

#include <cstdint>

#include "core/cpu/isa.h"
#include "core/philox_mask.h"

namespace tinybig_cuda {

// The most rows of x one call takes: each is one accumulator vector per row of w, and past a few
// the product's arithmetic, not the weight's memory traffic, sets the time (BLAS then wins).
constexpr int64_t kMaskedMatvecMaxBatch = 4;

// The paths with a fused kernel: AVX2 and AVX-512, which draw the keep bits of 8 or 16 elements in
// vector registers (philox_avx2.h, philox_avx512.h). The scalar and NEON paths have none: there
// masked_linear takes the blocked product.
bool masked_matvec_supports(CpuIsa isa);

// For rows r in [row_begin, row_end) of the row-major (out_features, in_features) w, and each of
// the first `batch` rows of x (row b at x + b * x_stride, in_features contiguous elements):
//   y[b * y_stride + r] = sum over c of keep(r * in_features + c) * w[r * in_features + c] * x[b * x_stride + c]
// where keep(i) is element i of the key's mask (docs/contract.md). A dropped weight counts as +0.0
// (so a dropped NaN adds nothing, as in the masked weight), summed in the vector's lane order.
// Scalar is float or double; isa must be one masked_matvec_supports; 1 <= batch <= kMaskedMatvecMaxBatch.
template <typename Scalar>
void masked_matvec_rows(CpuIsa isa, const Scalar* w, int64_t in_features, int64_t row_begin, int64_t row_end,
                        const Scalar* x, int64_t x_stride, int64_t batch, Scalar* y, int64_t y_stride,
                        const MaskKey& key);

}  // namespace tinybig_cuda
