// Run by ctest only in the ASan build: each case touches memory the host pool
// or the buffer cache holds free, which must be reported as use-after-poison
// (the test passes on that report). `in_bounds` touches only live memory and
// must stay quiet. The accesses go through volatile pointers so the compiler
// keeps them.
#include <cstdio>
#include <cstring>
#include <memory>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/host_pool.hpp"

using namespace pykvstore;

int main(int argc, char** argv) {
  const char* what = argc > 1 ? argv[1] : "";
  auto pool = std::make_shared<HostPool>(16 * kDirectAlignment, false, false);
  if (std::strcmp(what, "overflow_into_free_neighbour") == 0) {
    AlignedBuffer a(2 * kDirectAlignment, pool);  // the rest of the pool is free after it
    volatile std::uint8_t* p = a.data();
    p[2 * kDirectAlignment] = 1;  // one byte past the end
  } else if (std::strcmp(what, "use_after_release") == 0) {
    volatile std::uint8_t* p;
    {
      AlignedBuffer a(kDirectAlignment, pool);
      AlignedBuffer keep(kDirectAlignment, pool);  // so a's range stays a hole
      p = a.data();
      p[0] = 1;
    }
    std::printf("%d\n", p[100]);
  } else if (std::strcmp(what, "use_after_cache") == 0) {
    set_buffer_cache_limit(1u << 20);
    volatile std::uint8_t* p;
    {
      AlignedBuffer heap(3 * kDirectAlignment);  // not from a pool: the buffer cache keeps it
      p = heap.data();
      p[0] = 1;
    }
    std::printf("%d\n", p[5000]);
  } else if (std::strcmp(what, "in_bounds") == 0) {
    for (int i = 0; i < 100; ++i) {
      AlignedBuffer a(5000 + i, pool), b(7 * kDirectAlignment);
      std::memset(a.data(), i, a.capacity());  // the whole rounded-up allocation is usable
      std::memset(b.data(), i, b.capacity());
    }
    std::printf("in bounds: quiet\n");
    return 0;
  } else {
    std::fprintf(stderr, "unknown case %s\n", what);
    return 2;
  }
  std::printf("not reported\n");
  return 1;
}
