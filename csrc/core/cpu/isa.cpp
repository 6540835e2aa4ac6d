#include "core/cpu/isa.h"

#include <atomic>
#include <stdexcept>

namespace tinybig_cuda {
namespace {

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
    case CpuIsa::kNeon: return "neon";
  }
  return "unknown";
}

CpuIsa cpu_isa_from_name(const std::string& name) {
  std::string names = "'auto'";
  for (const CpuIsa isa : kAllCpuIsas) {
    if (name == cpu_isa_name(isa)) return isa;
    names += std::string(", '") + cpu_isa_name(isa) + "'";
  }
  throw std::invalid_argument("set_cpu_isa: expected name to be one of " + names + ", but got '" + name + "'");
}

bool cpu_supports(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
#if defined(__x86_64__)
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("popcnt");
#endif
#if defined(__aarch64__)
    case CpuIsa::kNeon:
      return true;  // Advanced SIMD is part of every AArch64 CPU
#endif
    default:
      return false;
  }
}

CpuIsa active_cpu_isa() { return isa_forced.load() ? forced_isa.load() : best_supported_isa(); }

void set_active_cpu_isa(CpuIsa isa) {
  if (!cpu_supports(isa)) {
    throw std::invalid_argument(std::string("this CPU does not support the '") + cpu_isa_name(isa) + "' path");
  }
  forced_isa.store(isa);
  isa_forced.store(true);
}

void use_best_cpu_isa() { isa_forced.store(false); }

}  // namespace tinybig_cuda
