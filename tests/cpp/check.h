// A minimal check macro for the torch-free tests: report every failure, exit non-zero at the end.
#pragma once

#include <cstdio>
#include <cstdlib>

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
