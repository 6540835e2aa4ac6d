// Known-answer vectors, the counter layout, the threshold edges and short tails on the CPU.
#include <cmath>
#include <vector>

#include "check.h"
#include "core/cpu/masked_copy.h"
#include "core/philox_mask.h"

using namespace tinybig_cuda;

namespace {

struct KnownAnswer {
  uint32_t counter[4];
  uint32_t key[2];
  uint32_t expected[4];
};

// Random123's kat_vectors for philox4x32_10.
const KnownAnswer kKnownAnswers[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

uint64_t join(uint32_t low, uint32_t high) { return (static_cast<uint64_t>(high) << 32) | low; }

void check_known_answers() {
  for (const KnownAnswer& kat : kKnownAnswers) {
    const PhiloxWords direct = philox4x32_10(kat.counter[0], kat.counter[1], kat.counter[2],
                                             kat.counter[3], kat.key[0], kat.key[1]);
    // The same vector through the contract's layout: counter = (block, offset), key = seed.
    const MaskKey key{join(kat.key[0], kat.key[1]), join(kat.counter[2], kat.counter[3]), 0};
    const PhiloxWords mapped = mask_block_words(join(kat.counter[0], kat.counter[1]), key);
    for (int i = 0; i < 4; ++i) {
      CHECK(direct.word[i] == kat.expected[i], "word %d: got %08x, expected %08x", i,
            direct.word[i], kat.expected[i]);
      CHECK(mapped.word[i] == kat.expected[i], "mapped word %d: got %08x, expected %08x", i,
            mapped.word[i], kat.expected[i]);
    }
  }
}

void check_thresholds() {
  CHECK(keep_threshold(0.0) == 0, "p=0");
  CHECK(keep_threshold(1.0) == (uint64_t{1} << 32), "p=1");
  CHECK(keep_threshold(std::ldexp(1.0, -32)) == 1, "p=2^-32");
  CHECK(keep_threshold(0.5) == (uint64_t{1} << 31), "p=0.5");
  CHECK(keep_threshold(std::nextafter(1.0, 0.0)) == 0xffffffffull, "p just below 1");
  CHECK(keep_threshold(std::nextafter(std::ldexp(1.0, -32), 0.0)) == 0, "p just below 2^-32");
  // p = 0 keeps no word, p = 1 keeps every word, p = 2^-32 keeps only word 0.
  for (const uint32_t word : {0u, 1u, 0x7fffffffu, 0x80000000u, 0xffffffffu}) {
    CHECK(!keeps(word, keep_threshold(0.0)), "p=0 kept word %08x", word);
    CHECK(keeps(word, keep_threshold(1.0)), "p=1 dropped word %08x", word);
    CHECK(keeps(word, keep_threshold(std::ldexp(1.0, -32))) == (word == 0), "p=2^-32, word %08x",
          word);
  }
}

// Tails of 1-3 elements at every position in a block, through the scalar CPU path.
void check_tails() {
  const MaskKey key{0x0123456789abcdefull, 0xfedcba9876543210ull, keep_threshold(0.5)};
  std::vector<uint32_t> input(8), output(8);
  for (size_t i = 0; i < input.size(); ++i) input[i] = 0x3f800000u + static_cast<uint32_t>(i);
  for (uint64_t element_offset = 0; element_offset < 8; ++element_offset) {
    for (int64_t numel = 1; numel <= 3; ++numel) {
      std::fill(output.begin(), output.end(), 0xdeadbeefu);
      masked_copy_range(CpuIsa::kScalar, input.data(), output.data(), 4, 0, numel, element_offset,
                        key);
      for (int64_t k = 0; k < numel; ++k) {
        const uint32_t expected = keeps_element(element_offset + k, key) ? input[k] : 0;
        CHECK(output[k] == expected, "offset %llu numel %lld element %lld",
              static_cast<unsigned long long>(element_offset), static_cast<long long>(numel),
              static_cast<long long>(k));
      }
      CHECK(output[numel] == 0xdeadbeefu, "wrote past the end (offset %llu numel %lld)",
            static_cast<unsigned long long>(element_offset), static_cast<long long>(numel));
    }
  }
}

}  // namespace

int main() {
  check_known_answers();
  check_thresholds();
  check_tails();
  return test::finish("philox_contract");
}
