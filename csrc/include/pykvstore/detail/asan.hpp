// Manual AddressSanitizer poisoning for memory this library recycles itself
// (the host pool's free ranges, the buffer cache's kept blocks), which ASan's
// own allocator never sees freed. Compiled in only under -fsanitize=address
// (`make sanitize`); elsewhere the macros are empty.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define PYKVSTORE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYKVSTORE_ASAN 1
#endif
#endif

#ifdef PYKVSTORE_ASAN
#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

namespace pykvstore::detail {

// Unpoisons [p, p + n) and hands the whole pages of its shadow back to the OS.
// Poisoning writes one shadow byte per 8 bytes, so a 1.5 GiB pool (3 GiB of
// addresses with its redzones) leaves 384 MiB of shadow resident after it is
// unmapped; GCC 12's ASan does not clear shadow on munmap itself. A dropped
// anonymous page reads back as zeros, which is "addressable" in the shadow.
inline void asan_forget(void* p, std::size_t n) {
  std::size_t scale = 0, offset = 0;
  __asan_get_shadow_mapping(&scale, &offset);
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto beg = reinterpret_cast<std::uintptr_t>(p), end = beg + n;
  const std::uintptr_t shadow_beg = (beg >> scale) + offset, shadow_end = (end >> scale) + offset;
  const std::uintptr_t pages_beg = (shadow_beg + page - 1) / page * page, pages_end = shadow_end / page * page;
  if (pages_end <= pages_beg) {
    ASAN_UNPOISON_MEMORY_REGION(p, n);
    return;
  }
  // the addresses whose shadow is those whole pages, and the ends around them
  const std::uintptr_t mid_beg = (pages_beg - offset) << scale, mid_end = (pages_end - offset) << scale;
  ASAN_UNPOISON_MEMORY_REGION(p, mid_beg - beg);
  ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(mid_end), end - mid_end);
  if (::madvise(reinterpret_cast<void*>(pages_beg), pages_end - pages_beg, MADV_DONTNEED) != 0)
    ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(mid_beg), mid_end - mid_beg);
}

}  // namespace pykvstore::detail

#define PYKVSTORE_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define PYKVSTORE_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
// Before unmapping a large poisoned range (the pool's): unpoison it cheaply.
#define PYKVSTORE_ASAN_FORGET(p, n) ::pykvstore::detail::asan_forget((p), (n))
#else
#define PYKVSTORE_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define PYKVSTORE_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#define PYKVSTORE_ASAN_FORGET(p, n) ((void)(p), (void)(n))
#endif
