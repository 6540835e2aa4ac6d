// The tinybig_cuda op schemas, the device-independent halves of the masking ops, and the Python
// module that loads them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>

#include <array>
#include <map>
#include <string>

#include "argument_checks.h"
#include "cpu/masked_copy.h"
#include "cpu/output_cache.h"
#include "mask_op.h"
#include "mask_window.h"
#include "module_calls.h"

namespace tinybig_cuda {

namespace {

// The rows of a tensor of `shape`, as the window rule sees them: its last dimension (a 0-d
// tensor is one row of one element).
int64_t row_width(at::IntArrayRef shape) { return shape.empty() ? 1 : shape.back(); }

// Checks element_offset and row_length against a tensor of `shape` and returns its window.
MaskWindow checked_window(const char* op, at::IntArrayRef shape, int64_t numel,
                          int64_t element_offset, std::optional<int64_t> row_length) {
  const int64_t width = row_width(shape);
  int64_t extent = numel;  // global indices spanned: from the first element past the last
  if (row_length && numel > 0) {
    extent = check_row_length(op, *row_length, width, numel / width);
  }
  check_element_offset(op, element_offset, extent);
  return make_mask_window(static_cast<uint64_t>(element_offset), numel, width,
                          static_cast<uint64_t>(row_length.value_or(width)));
}

}  // namespace

MaskWindow check_mask_apply_arguments(const at::Tensor& w, double p, const at::Tensor& rng_state,
                                      int64_t element_offset, std::optional<int64_t> row_length) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask_apply";
  check_maskable_dtype(op, "w", w);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, w.device());
  return checked_window(op, w.sizes(), w.numel(), element_offset, row_length);
}

at::Tensor bernoulli_mask_apply_with(MaskedCopyKernel kernel, const at::Tensor& w, double p,
                                     const at::Tensor& rng_state, int64_t element_offset,
                                     std::optional<int64_t> row_length) {
  const MaskWindow window = check_mask_apply_arguments(w, p, rng_state, element_offset, row_length);

  // The output is always contiguous, so element i of the flat output is logical element i.
  at::Tensor output = empty_output(w.sizes(), w.options());
  if (w.numel() > 0) {
    kernel(w, output, p, rng_state.contiguous(), window);
  }
  return output;
}

at::Tensor bernoulli_mask_with(MaskedCopyKernel kernel, at::IntArrayRef shape, double p,
                               const at::Tensor& rng_state, int64_t element_offset,
                               std::optional<int64_t> row_length) {
  constexpr const char* op = "tinybig_cuda.bernoulli_mask";
  const int64_t numel = check_shape(op, shape);
  check_keep_probability(op, p);
  check_rng_state(op, rng_state, rng_state.device());
  const MaskWindow window = checked_window(op, shape, numel, element_offset, row_length);
  const at::TensorOptions options = rng_state.options().dtype(at::kBool);
  // The mask is the masked copy of an all-true tensor (one `true` expanded, so nothing of the
  // mask's size is allocated for it): one kernel serves both ops.
  at::Tensor mask = empty_output(shape, options);
  if (mask.numel() > 0) {
    kernel(at::ones({}, options).expand(shape), mask, p, rng_state.contiguous(), window);
  }
  return mask;
}

TORCH_LIBRARY(tinybig_cuda, m) {
  // rng_state is a tensor, not an int, so torch.compile does not specialise on the seed and a
  // CUDA graph replay reads whatever state was last written into it.
  // SymInt sizes, counts and offsets let torch.compile keep them symbolic instead of recompiling
  // for each value; the kernels take them as plain integers.
  // element_offset and row_length place the tensor in a larger matrix's mask (a shard): local
  // element (r, c), r counting rows of the last dimension, is global element
  // element_offset + r * row_length + c; row_length=None means rows follow one another.
  m.def("bernoulli_mask_apply(Tensor w, float p, Tensor rng_state, SymInt element_offset=0, SymInt? row_length=None) -> Tensor");
  m.def("bernoulli_mask(SymInt[] shape, float p, Tensor rng_state, SymInt element_offset=0, SymInt? row_length=None) -> Tensor");
  // Compact parameters (only the kept entries stored): the mask's kept count, and the scatter and
  // gather between the kept values (in row-major order) and the full matrix, each the other's
  // adjoint. kept_count is an argument, not read from the mask, so compress's output shape is
  // known without running it; the kernels refuse a count that is not the mask's.
  m.def("bernoulli_mask_count(SymInt numel, float p, Tensor rng_state, SymInt element_offset=0) -> Tensor");
  m.def("bernoulli_mask_expand(Tensor values, float p, Tensor rng_state, SymInt[] shape, SymInt element_offset=0) -> Tensor");
  m.def("bernoulli_mask_compress(Tensor full, float p, Tensor rng_state, SymInt kept_count, SymInt element_offset=0) -> Tensor");
}

}  // namespace tinybig_cuda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  namespace tc = tinybig_cuda;
  module.doc() = "tinybig_cuda's compiled ops (registered in torch.ops.tinybig_cuda) and CPU ISA control.";
  module.def("philox4x32_10",
             [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
               const tc::PhiloxWords words = tc::philox4x32_10(counter[0], counter[1], counter[2],
                                                               counter[3], key[0], key[1]);
               return std::array<uint32_t, 4>{words.word[0], words.word[1], words.word[2], words.word[3]};
             },
             "Philox4x32-10 of the compiled header, for known-answer tests.");
  module.def("cpu_isa", [] { return tc::cpu_isa_name(tc::active_cpu_isa()); },
             "The instruction set the CPU kernel uses now.");
  module.def("supported_cpu_isas", [] {
        std::vector<std::string> names;
        for (const tc::CpuIsa isa : tc::kAllCpuIsas) {
          if (tc::cpu_supports(isa)) names.emplace_back(tc::cpu_isa_name(isa));
        }
        return names;
      },
      "The instruction sets this CPU runs, slowest first; each gives the same bits.");
  module.def("set_cpu_isa",
             [](const std::string& name) {
               if (name == "auto") return tc::use_best_cpu_isa();
               tc::set_active_cpu_isa(tc::cpu_isa_from_name(name));
             },
             "Forces the CPU kernel onto one instruction set (for tests and benchmarks); 'auto' "
             "returns to the fastest supported one.");
  module.def("output_cache_info", [] {
        const tc::OutputCacheInfo info = tc::output_cache_info();
        return std::map<std::string, int64_t>{{"limit_bytes", info.limit_bytes},
                                              {"cached_bytes", info.cached_bytes},
                                              {"cached_blocks", info.cached_blocks},
                                              {"hits", info.hits},
                                              {"misses", info.misses}};
      },
      "The CPU output cache's limit, what it holds, and its hits and misses so far.");
  module.def("set_output_cache_limit", &tc::set_output_cache_limit,
             "Caches at most this many bytes of freed CPU outputs (0: none), freeing the rest.");
  module.def("empty_output_cache", &tc::empty_output_cache,
             "Frees every cached CPU output block.");
  module.def("draw_rng_state", &tc::draw_rng_state,
             "A fresh int64 [seed, offset] on the device, from torch's default generator for it.");
  module.def("masked_fabrication", &tc::masked_fabrication,
             "masking_reconciliation's eager call in one trip into C++: (the (n, D) matrix, the state "
             "it used: rng_state on w's device, or a fresh one when rng_state is None).");
  module.attr("MAX_COMPACT_ELEMENTS") = tc::kMaxCompactElements;
  module.def("has_cuda_kernels", [] {
#ifdef TINYBIG_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build compiled the CUDA kernels.");
}
