// The one dispatch from an element size to the unsigned integer type of that many bytes. Every
// kernel moves bit patterns (a kept element is copied, a dropped one written as zero bits, which
// is +0.0 in every floating format and false for bool), so the size is all a kernel needs to know
// of a dtype. Torch-free, so the C++ tests and the CUDA launchers use it too.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace tinybig_cuda {

// Returns visit(Bits{}) for the Bits of `element_size` bytes (1, 2, 4 or 8); any other size is a
// caller's bug (every dtype the ops take has one of these sizes) and throws.
//   visit_element_bits(4, [&](auto bits) { using Bits = decltype(bits); ... });
template <typename Visitor>
decltype(auto) visit_element_bits(int element_size, Visitor&& visit) {
  switch (element_size) {
    case 1: return visit(uint8_t{});
    case 2: return visit(uint16_t{});
    case 4: return visit(uint32_t{});
    case 8: return visit(uint64_t{});
  }
  throw std::invalid_argument("element_size must be 1, 2, 4 or 8, but got " + std::to_string(element_size));
}

}  // namespace tinybig_cuda
