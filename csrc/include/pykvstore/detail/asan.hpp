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
#define PYKVSTORE_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define PYKVSTORE_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define PYKVSTORE_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define PYKVSTORE_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
