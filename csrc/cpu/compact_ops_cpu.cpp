// CPU kernels of the compact ops: per-chunk counts in parallel, a prefix sum of them, then the
// scatter (expand) or gather (compress) of every chunk in parallel, each chunk from its own rank.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../compact_op.h"
#include "compact_ranges.h"
#include "cpu_op_helpers.h"
#include "output_cache.h"

namespace tinybig_cuda {
namespace {

// Elements per chunk: enough work (tens of microseconds) to amortise handing it to a thread, and
// few enough chunks that their serial prefix sum costs nothing.
constexpr int64_t kChunkElements = 1 << 16;

// first_rank[c] is the rank of chunk c's first kept element; first_rank.back() is the total.
std::vector<int64_t> chunk_first_ranks(CpuIsa isa, int64_t numel, uint64_t element_offset,
                                       const MaskKey& key) {
  const int64_t chunks = (numel + kChunkElements - 1) / kChunkElements;
  std::vector<int64_t> first_rank(chunks + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      first_rank[c + 1] = count_kept_range(isa, c * kChunkElements,
                                           std::min(numel, (c + 1) * kChunkElements), element_offset, key);
    }
  });
  for (int64_t c = 0; c < chunks; ++c) first_rank[c + 1] += first_rank[c];
  return first_rank;
}

at::Tensor count_cpu(int64_t numel, double p, const at::Tensor& rng_state, int64_t element_offset) {
  check_count_arguments(numel, p, rng_state, element_offset);
  const MaskKey key = cpu_mask_key(rng_state, p);
  const int64_t kept = chunk_first_ranks(active_cpu_isa(), numel, element_offset, key).back();
  at::Tensor count = at::empty({}, rng_state.options());
  *count.mutable_data_ptr<int64_t>() = kept;
  return count;
}

at::Tensor expand_cpu(const at::Tensor& values, double p, const at::Tensor& rng_state,
                      at::IntArrayRef shape, int64_t element_offset) {
  const int64_t numel = check_expand_arguments(values, p, rng_state, shape, element_offset);
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const std::vector<int64_t> first_rank = chunk_first_ranks(isa, numel, element_offset, key);
  check_values_match_mask(values, first_rank.back(), shape);

  at::Tensor full = empty_output(shape, values.options());
  const at::Tensor compact = values.contiguous();
  const void* in = compact.const_data_ptr();
  void* out = full.mutable_data_ptr();
  const int element_size = static_cast<int>(values.element_size());
  const int64_t chunks = static_cast<int64_t>(first_rank.size()) - 1;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      expand_range(isa, in, compact.numel(), out, element_size, c * kChunkElements,
                   std::min(numel, (c + 1) * kChunkElements), first_rank[c], element_offset, key);
    }
  });
  return full;
}

at::Tensor compress_cpu(const at::Tensor& full, double p, const at::Tensor& rng_state,
                        int64_t kept_count, int64_t element_offset) {
  check_compress_arguments(full, p, rng_state, kept_count, element_offset);
  const MaskKey key = cpu_mask_key(rng_state, p);
  const CpuIsa isa = active_cpu_isa();
  const int64_t numel = full.numel();
  const std::vector<int64_t> first_rank = chunk_first_ranks(isa, numel, element_offset, key);
  check_kept_count_matches_mask(kept_count, first_rank.back(), full);

  at::Tensor values = empty_output({kept_count}, full.options());
  const at::Tensor source = full.contiguous();  // element k of the flat source is logical element k
  const void* in = source.const_data_ptr();
  void* out = values.mutable_data_ptr();
  const int element_size = static_cast<int>(full.element_size());
  const int64_t chunks = static_cast<int64_t>(first_rank.size()) - 1;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      compress_range(isa, in, out, kept_count, element_size, c * kChunkElements,
                     std::min(numel, (c + 1) * kChunkElements), first_rank[c], element_offset, key);
    }
  });
  return values;
}

}  // namespace

TORCH_LIBRARY_IMPL(tinybig_cuda, CPU, m) {
  m.impl("bernoulli_mask_count", count_cpu);
  m.impl("bernoulli_mask_expand", expand_cpu);
  m.impl("bernoulli_mask_compress", compress_cpu);
}

}  // namespace tinybig_cuda
