// Run by ctest only in the ASan build, one case per process (a death test:
// ctest passes a case on ASan's "use-after-poison" report, CMakeLists.txt).
// Each case touches a byte no live buffer owns: memory the host pool or the
// buffer cache holds free, the redzone after a live pool buffer (where its
// live neighbour would otherwise start), or the tail between a buffer's size
// and its rounded-up capacity. `in_bounds` touches only owned bytes, and does
// padded O_DIRECT I/O through the file engine, and must stay quiet. Accesses
// go through volatile pointers so the compiler keeps them; a case that gets
// past its bad access prints "not reported" and exits 1.
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/file_engine.hpp"
#include "pykvstore/host_pool.hpp"

using namespace pykvstore;
constexpr std::size_t P = kDirectAlignment;

namespace {

// Padded O_DIRECT write and read of odd sizes (the kernel reads the padding
// past size()); falls back to buffered I/O where the file system refuses it.
int direct_io_round_trip(const std::shared_ptr<HostPool>& pool) {
  char dir_template[] = "pykvstore-asan-XXXXXX";  // the build dir: tmpfs may refuse O_DIRECT
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) return 1;
  FileEngine engine(1);
  engine.set_pool(pool);
  int bad = 0;
  for (std::size_t size : {std::size_t{1}, std::size_t{5000}, 3 * P, 3 * P + 17}) {
    AlignedBuffer out(size, pool);
    for (std::size_t i = 0; i < size; ++i) out.data()[i] = static_cast<std::uint8_t>(i * 7);
    const std::string name = std::string(dir) + "/c" + std::to_string(size);
    engine.write_now(name, name + ".tmp", out, size, DirectMode::Auto, false);
    ReadResult in = engine.read_now(name, DirectMode::Auto, 1 << 20, false);
    if (in.buffer->size() != size || std::memcmp(in.buffer->data(), out.data(), size) != 0) ++bad;
    ::unlink(name.c_str());
  }
  ::rmdir(dir);
  std::printf("direct writes %llu, direct reads %llu\n", (unsigned long long)engine.counters().direct_writes.load(),
              (unsigned long long)engine.counters().direct_reads.load());
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const char* what = argc > 1 ? argv[1] : "";
  auto pool = std::make_shared<HostPool>(16 * P, false, false);
  if (std::strcmp(what, "overflow_into_free_neighbour") == 0) {
    AlignedBuffer a(2 * P, pool);  // the rest of the pool is free after it
    volatile std::uint8_t* p = a.data();
    p[2 * P] = 1;  // one byte past the end
  } else if (std::strcmp(what, "far_overflow_into_free_range") == 0) {
    AlignedBuffer a(2 * P, pool);  // the only buffer: free pool space follows it, past its redzone
    volatile std::uint8_t* p = a.data();
    p[2 * P * kAddressSpread] = 1;  // where the free range after a lies: 2 pages past its redzone
  } else if (std::strcmp(what, "overflow_into_live_neighbour") == 0) {
    AlignedBuffer a(2 * P, pool), b(P, pool);  // b starts where a ends, in the pool's offsets
    if (pool->offset_of(b.data()) != pool->offset_of(a.data()) + 2 * P) {
      std::printf("layout: b does not follow a\n");
      return 3;
    }
    volatile std::uint8_t* p = a.data();
    p[a.size()] = 1;  // one byte past a: b's first byte without the redzone
  } else if (std::strcmp(what, "overflow_past_requested_size") == 0) {
    AlignedBuffer a(5000, pool), b(P, pool);  // a's capacity is 2 pages
    volatile std::uint8_t* p = a.data();
    p[5000] = 1;
  } else if (std::strcmp(what, "heap_overflow_past_requested_size") == 0) {
    AlignedBuffer h(5000);  // not from a pool: posix_memalign of 2 pages
    volatile std::uint8_t* p = h.data();
    p[5000] = 1;
  } else if (std::strcmp(what, "cached_block_past_requested_size") == 0) {
    set_buffer_cache_limit(1u << 20);
    { AlignedBuffer first(2 * P); }  // kept by the buffer cache
    AlignedBuffer again(5000);       // the same 2-page block, taken back for fewer bytes
    volatile std::uint8_t* p = again.data();
    p[5000] = 1;
  } else if (std::strcmp(what, "read_past_shrunk_size") == 0) {
    AlignedBuffer a(3 * P, pool);
    a.set_size(100);  // a read that found a shorter file: the rest is not data
    volatile std::uint8_t* p = a.data();
    std::printf("%d\n", p[100]);
  } else if (std::strcmp(what, "use_after_release") == 0) {
    volatile std::uint8_t* p;
    {
      AlignedBuffer a(P, pool);
      AlignedBuffer keep(P, pool);  // so a's range stays a hole
      p = a.data();
      p[0] = 1;
    }
    std::printf("%d\n", p[100]);
  } else if (std::strcmp(what, "use_after_cache") == 0) {
    set_buffer_cache_limit(1u << 20);
    volatile std::uint8_t* p;
    {
      AlignedBuffer heap(3 * P);  // not from a pool: the buffer cache keeps it
      p = heap.data();
      p[0] = 1;
    }
    std::printf("%d\n", p[5000]);
  } else if (std::strcmp(what, "in_bounds") == 0) {
    set_buffer_cache_limit(1u << 20);
    for (int i = 0; i < 100; ++i) {
      // neighbours in the pool, a heap buffer (fresh, then from the cache)
      AlignedBuffer a(5000 + i, pool), b(P + i, pool), c(7 * P - i);
      std::memset(a.data(), i, a.size());  // every requested byte is usable
      std::memset(b.data(), i, b.size());
      std::memset(c.data(), i, c.size());
    }
    if (direct_io_round_trip(pool) != 0) {
      std::printf("direct I/O round trip differed\n");
      return 1;
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
