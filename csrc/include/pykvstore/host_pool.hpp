// One large host region carved into chunk-sized buffers. Where a GPU exists the
// region is pinned (page-locked), so a chunk kept here feeds DMA directly;
// elsewhere it is anonymous page-aligned memory whose pages stay faulted in
// across reuse. Thread-safe; allocation is best fit with coalescing on free.
//
// Under AddressSanitizer (`make sanitize-address`) each pool offset maps to
// twice its address (kAddressSpread): an allocation of n rounded bytes is
// followed by n poisoned bytes no other allocation can use, so a write past
// one live buffer is reported instead of landing in its live neighbour. The
// bookkeeping (offsets, best fit, stats) is the same in every build; only the
// address range reserved (MAP_NORESERVE, never touched) doubles. Poisoning is
// lazy, to twice the end of the furthest redzone handed out so far (16 MiB
// more at least): a 1.5 GiB pool of which a test uses 10 MiB costs ASan about
// 4 MiB of shadow, not 384. Beyond that mark nothing was ever handed out; a
// wild access there is the one kind not reported.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "pykvstore/detail/asan.hpp"

namespace pykvstore {

#ifdef PYKVSTORE_ASAN
constexpr std::size_t kAddressSpread = 2;  // offset o lives at base + 2o; [o+n, 2(o+n)) is the redzone
#else
constexpr std::size_t kAddressSpread = 1;
#endif

struct PoolStats {
  std::size_t capacity = 0;
  std::size_t free_bytes = 0;
  std::size_t largest_free = 0;
  std::size_t live_buffers = 0;
  std::uint64_t allocations = 0;  // served from the pool
  std::uint64_t exhausted = 0;    // requests the pool could not serve (the caller used the heap)
  bool pinned = false;
  bool huge_pages = false;
};

class HostPool {
 public:
  // pin: page-lock through CUDA when a device is visible (plain memory
  // otherwise). huge_pages: ask the kernel for transparent huge pages.
  HostPool(std::size_t capacity, bool pin, bool huge_pages);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  // `bytes` rounded up to the page; nullptr when no free range fits. Under
  // ASan only the `bytes` asked for are addressable: the rounding tail and
  // the redzone after it stay poisoned.
  std::uint8_t* allocate(std::size_t bytes);
  // Returns a range allocate() handed out (same rounded size).
  void release(std::uint8_t* p, std::size_t bytes);
  bool contains(const void* p) const noexcept;
  PoolStats stats() const;
  std::uintptr_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(base_); }

  // Commits the pages that pool offsets [0, nbytes) live at (nbytes rounded up
  // to whole pages, at most the capacity; under ASan the doubled address range
  // they spread over, redzones included) with MADV_POPULATE_WRITE, one slice
  // of kPrefaultSlice addresses per call, so the first writes into buffers
  // handed out from there do not fault. Returns the offset bytes done: nbytes;
  // less when stop_prefault() was called (it is checked between slices) or a
  // slice failed (ENOMEM: the kernel found no memory for it); 0 for a pinned
  // pool (committed at allocation) or a kernel without the flag (< 5.14,
  // EINVAL). The kernel only fills pages not yet present, so buffers in use
  // meanwhile keep their bytes: no lock is held. Blocks the calling thread
  // (the binding releases the GIL); any thread.
  std::size_t prefault(std::size_t nbytes);
  // A running prefault ends after its current slice, and later ones do
  // nothing: the pool's store is closing. Any thread; the destructor calls it.
  void stop_prefault() noexcept { prefault_stop_.store(true, std::memory_order_relaxed); }
  static constexpr std::size_t kPrefaultSlice = std::size_t{64} << 20;
  // Where in the pool's capacity `p` (from allocate) starts: (p - base) in
  // normal builds, the same number under ASan's spread addresses.
  std::size_t offset_of(const void* p) const noexcept {
    return static_cast<std::size_t>(static_cast<const std::uint8_t*>(p) - base_) / kAddressSpread;
  }

 private:
  void add_free(std::size_t offset, std::size_t length);  // coalesces with neighbours

  std::uint8_t* base_ = nullptr;
  std::size_t capacity_ = 0;  // what allocations can use; capacity_ * kAddressSpread is reserved
  bool pinned_ = false;
  bool huge_pages_ = false;
  std::atomic<bool> prefault_stop_{false};
  mutable std::mutex mutex_;
  std::map<std::size_t, std::size_t> free_by_offset_;     // offset -> length
  std::multimap<std::size_t, std::size_t> free_by_size_;  // length -> offset
  std::size_t free_bytes_ = 0;
  std::size_t live_ = 0;
  std::uint64_t allocations_ = 0;
  std::uint64_t exhausted_ = 0;
#ifdef PYKVSTORE_ASAN
  std::size_t poisoned_ = 0;  // bytes from base_ poisoned as free or redzone (all but live buffers)
#endif
};

}  // namespace pykvstore
