// The CPU masked copy, free of torch so the C++ tests can run every instruction-set path.
#pragma once

#include <cstdint>
#include <string>

#include "../philox_mask.h"

namespace tinybig_cuda {

// Instruction sets the CPU kernel is built for, slowest first. Every one gives the same bits.
// kScalar is portable C++ (no intrinsics) and runs on every CPU; kAvx2 and kAvx512 exist on x86-64
// and kNeon on aarch64 (where NEON is part of the base architecture).
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

// For k in [begin, end): output[k] = input[k] if global element element_offset + k is kept, else
// zero bits. The copy moves bit patterns, so element_size (1, 2, 4 or 8 bytes) is all it needs
// to know of the dtype: zero bits are +0.0 in every floating format, and false for bool. input and
// output may be the same buffer (the mask applied in place); otherwise they must not overlap.
void masked_copy_range(CpuIsa isa, const void* input, void* output, int element_size,
                       int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key);

}  // namespace tinybig_cuda
