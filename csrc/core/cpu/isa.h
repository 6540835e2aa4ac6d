// The CPU instruction sets the kernels are written for, which one runs, and the compiler targets
// of the x86 paths. Torch-free, so the C++ tests can run every path.
//
// No file is compiled with instruction-set flags: each vector function carries its path's target
// attribute below (x86), or uses the architecture's baseline (NEON on AArch64). So one build runs
// on every CPU of its architecture, and picks the fastest path the CPU it runs on supports.
#pragma once

#include <string>

// The features each x86 path is compiled with; cpu_supports() checks exactly these.
#define TINYBIG_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#define TINYBIG_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))

namespace tinybig_cuda {

// Slowest first. Every one gives the same bits. kScalar is portable C++ (no intrinsics) and runs
// on every CPU; kAvx2 and kAvx512 exist on x86-64 and kNeon on AArch64.
enum class CpuIsa { kScalar, kAvx2, kAvx512, kNeon };
constexpr CpuIsa kAllCpuIsas[] = {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kNeon};

const char* cpu_isa_name(CpuIsa isa);
CpuIsa cpu_isa_from_name(const std::string& name);  // throws std::invalid_argument
bool cpu_supports(CpuIsa isa);

// The path used by default is the fastest this CPU supports; tests and benchmarks may force
// another. set_active_cpu_isa throws std::invalid_argument for an unsupported one.
CpuIsa active_cpu_isa();
void set_active_cpu_isa(CpuIsa isa);
void use_best_cpu_isa();

}  // namespace tinybig_cuda
