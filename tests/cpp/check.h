// A minimal check macro for the torch-free tests: report every failure, exit non-zero at the end.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace test {
inline int& failures() {
  static int count = 0;
  return count;
}
inline int finish(const char* name) {
  if (failures() == 0) {
    std::printf("%s: all checks passed\n", name);
    return EXIT_SUCCESS;
  }
  std::printf("%s: %d checks failed\n", name, failures());
  return EXIT_FAILURE;
}
// memcmp of `bytes` bytes, also for empty buffers: std::vector::data() of an empty vector may be
// null, and memcmp of a null pointer is undefined even for 0 bytes.
inline bool same_bytes(const void* a, const void* b, std::size_t bytes) {
  return bytes == 0 || std::memcmp(a, b, bytes) == 0;
}
}  // namespace test

#define CHECK(condition, ...)                                                \
  do {                                                                       \
    if (!(condition)) {                                                      \
      ++test::failures();                                                    \
      std::printf("%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #condition); \
      std::printf(__VA_ARGS__);                                              \
      std::printf("\n");                                                     \
    }                                                                        \
  } while (0)
