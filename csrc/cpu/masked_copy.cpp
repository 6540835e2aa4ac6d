#include "masked_copy.h"

#include <atomic>
#include <stdexcept>

namespace tinybig_cuda {
namespace {

template <typename Bits>
void masked_copy_scalar(const Bits* input, Bits* output, int64_t begin, int64_t end,
                        uint64_t element_offset, const MaskKey& key) {
  int64_t k = begin;
  while (k < end) {
    const uint64_t global = element_offset + static_cast<uint64_t>(k);
    const PhiloxWords words = mask_block_words(global / kWordsPerBlock, key);
    for (uint64_t w = global % kWordsPerBlock; w < kWordsPerBlock && k < end; ++w, ++k) {
      output[k] = keeps(words.word[w], key.threshold) ? input[k] : Bits(0);
    }
  }
}

template <template <typename> class Kernel>
void dispatch_element_size(const void* input, void* output, int element_size, int64_t begin,
                           int64_t end, uint64_t element_offset, const MaskKey& key) {
  switch (element_size) {
    case 1:
      return Kernel<uint8_t>::run(static_cast<const uint8_t*>(input), static_cast<uint8_t*>(output),
                                  begin, end, element_offset, key);
    case 2:
      return Kernel<uint16_t>::run(static_cast<const uint16_t*>(input),
                                   static_cast<uint16_t*>(output), begin, end, element_offset, key);
    case 4:
      return Kernel<uint32_t>::run(static_cast<const uint32_t*>(input),
                                   static_cast<uint32_t*>(output), begin, end, element_offset, key);
    case 8:
      return Kernel<uint64_t>::run(static_cast<const uint64_t*>(input),
                                   static_cast<uint64_t*>(output), begin, end, element_offset, key);
    default:
      throw std::invalid_argument("masked_copy_range: element_size must be 1, 2, 4 or 8");
  }
}

template <typename Bits>
struct ScalarKernel {
  static void run(const Bits* input, Bits* output, int64_t begin, int64_t end,
                  uint64_t element_offset, const MaskKey& key) {
    masked_copy_scalar(input, output, begin, end, element_offset, key);
  }
};

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
  }
  return "unknown";
}

CpuIsa cpu_isa_from_name(const std::string& name) {
  for (const CpuIsa isa : kAllCpuIsas) {
    if (name == cpu_isa_name(isa)) return isa;
  }
  throw std::invalid_argument("expected a CPU ISA name of scalar, avx2 or avx512, but got '" +
                              name + "'");
}

bool cpu_supports(CpuIsa isa) {
  return isa == CpuIsa::kScalar;
}

CpuIsa active_cpu_isa() {
  return isa_forced.load() ? forced_isa.load() : best_supported_isa();
}

void set_active_cpu_isa(CpuIsa isa) {
  if (!cpu_supports(isa)) {
    throw std::invalid_argument(std::string("this CPU does not support the '") +
                                cpu_isa_name(isa) + "' path");
  }
  forced_isa.store(isa);
  isa_forced.store(true);
}

void masked_copy_range(CpuIsa isa, const void* input, void* output, int element_size,
                       int64_t begin, int64_t end, uint64_t element_offset, const MaskKey& key) {
  switch (isa) {
    default:
      return dispatch_element_size<ScalarKernel>(input, output, element_size, begin, end,
                                                 element_offset, key);
  }
}

}  // namespace tinybig_cuda
