// A minimal check harness for the C++ unit tests: CHECK records a failure with
// its line and keeps going; main() returns non-zero if any check failed, which
// is what ctest looks at. No framework to install on a fresh clone.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace pykvstore_test {
inline int& failures() {
  static int n = 0;
  return n;
}
inline int finish(const char* name) {
  if (failures() == 0) std::printf("%s: all checks passed\n", name);
  else std::printf("%s: %d check(s) FAILED\n", name, failures());
  return failures() == 0 ? 0 : 1;
}
}  // namespace pykvstore_test

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ++pykvstore_test::failures();                                            \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define CHECK_EQ(a, b)                                                         \
  do {                                                                         \
    auto va_ = (a);                                                            \
    auto vb_ = (b);                                                            \
    if (!(va_ == vb_)) {                                                       \
      ++pykvstore_test::failures();                                            \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%llu vs %llu)\n", __FILE__, __LINE__, #a, #b, \
                   (unsigned long long)va_, (unsigned long long)vb_);          \
    }                                                                          \
  } while (0)
