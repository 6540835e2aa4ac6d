// tinybig_cuda._C: the Python-side controls of the op library: CPU instruction-set selection, the
// output cache, the module's one-trip eager call, build facts. The ops themselves are in the op
// library (csrc/core, csrc/ops), registered in torch.ops.tinybig_cuda, and need no
// Python. _C calls the library's functions by name: tinybig_cuda/_library.py loads the library
// (RTLD_GLOBAL) before it imports _C.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <map>
#include <string>
#include <vector>

#include "core/cpu/isa.h"
#include "ops/build.h"
#include "ops/argument_checks.h"
#include "ops/fabrication.h"
#include "core/mask_cache.h"
#include "ops/output_memory.h"
#include "core/philox_mask.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  namespace tc = tinybig_cuda;
  module.doc() = "Python-side controls of tinybig_cuda's op library (the ops are in torch.ops.tinybig_cuda).";
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
  module.def("empty_compact_cache", &tc::clear_mask_caches,
             "Forgets every mask the compact ops counted, freeing their ranks (on the GPU too).");
  module.def("draw_rng_state", &tc::draw_rng_state,
             "A fresh int64 [seed, offset] on the device, from torch's default generator for it.");
  module.def("rng_state_on", &tc::rng_state_on,
             "masking_reconciliation's fixed rng_state as a call on the device uses it: the state itself "
             "if it is there, else a copy there made outside inference mode (the module's buffer from "
             "then on), or, on the meta device, a data-less one for that call.");
  module.def("masked_fabrication", &tc::masked_fabrication,
             "masking_reconciliation's eager call in one trip into C++: (the (n, D) matrix, the state "
             "it used: rng_state on w's device, or a fresh one when rng_state is None).");
  // The argument rules' constants (ops/argument_checks.h), for tinybig_cuda/_arguments.py.
  module.attr("MAX_COMPACT_ELEMENTS") = tc::kMaxCompactElements;
  module.def("maskable_dtype_names", &tc::maskable_dtype_names,
             "The names (in torch) of the dtypes the ops mask, expand and compress, in the order "
             "messages list them.");
  module.def("has_cuda_kernels", &tc::built_with_cuda_kernels,
             "Whether the op library was built with its CUDA kernels.");
}
