#include "pykvstore/host_pool.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <new>
#include <stdexcept>
#include <string>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/cuda_runtime_info.hpp"
#include "pykvstore/detail/asan.hpp"

namespace pykvstore {

HostPool::HostPool(std::size_t capacity, bool pin, bool huge_pages)
    : capacity_(round_up(capacity == 0 ? kDirectAlignment : capacity, kDirectAlignment)) {
  const std::size_t reserved = capacity_ * kAddressSpread;
  if (pin && cuda_device_count() > 0) {
    void* p = cuda_host_alloc(reserved);
    if (p != nullptr) {
      base_ = static_cast<std::uint8_t*>(p);
      pinned_ = true;
    }
  }
  if (base_ == nullptr) {
    // MAP_NORESERVE: pages are committed on first touch, so an unused pool costs nothing.
    void* p = ::mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<std::uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    if (huge_pages) huge_pages_ = ::madvise(p, reserved, MADV_HUGEPAGE) == 0;
#endif
  }
  add_free(0, capacity_);
  free_bytes_ = capacity_;
  // Free ranges and redzones are poisoned as allocation first reaches them (allocate).
}

HostPool::~HostPool() {
  stop_prefault();
  PYKVSTORE_ASAN_FORGET(base_, capacity_ * kAddressSpread);  // the addresses may be mapped again
  if (pinned_)
    cuda_host_free(base_);
  else
    ::munmap(base_, capacity_ * kAddressSpread);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // linux/mman.h since 5.14; older headers lack it, the kernel answers EINVAL
#endif

std::size_t HostPool::prefault(std::size_t nbytes) {
  if (pinned_) return 0;
  const std::size_t want = std::min(round_up(nbytes, kDirectAlignment), capacity_);
  // Offsets [0, want) live at addresses [0, want * kAddressSpread): under ASan
  // a buffer at offset o sits at 2o and its redzone after it, so the whole
  // doubled range is what the first buffers' writes touch. Only the kernel
  // writes here (no user access), so ASan's shadow is neither read nor changed.
  const std::size_t end = want * kAddressSpread;
  std::size_t done = 0;
  while (done < end && !prefault_stop_.load(std::memory_order_relaxed)) {
    const std::size_t n = std::min(kPrefaultSlice, end - done);
    if (::madvise(base_ + done, n, MADV_POPULATE_WRITE) != 0) break;  // EINVAL: no such flag; ENOMEM, EINTR: stop
    done += n;
  }
  return done / kAddressSpread;
}

void HostPool::add_free(std::size_t offset, std::size_t length) {
  auto next = free_by_offset_.lower_bound(offset);
  auto erase_sized = [this](std::size_t off, std::size_t len) {
    auto range = free_by_size_.equal_range(len);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == off) {
        free_by_size_.erase(it);
        return;
      }
  };
  if (next != free_by_offset_.end() && offset + length == next->first) {
    length += next->second;
    erase_sized(next->first, next->second);
    next = free_by_offset_.erase(next);
  }
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      length += prev->second;
      erase_sized(prev->first, prev->second);
      free_by_offset_.erase(prev);
    }
  }
  free_by_offset_.emplace(offset, length);
  free_by_size_.emplace(length, offset);
}

std::uint8_t* HostPool::allocate(std::size_t bytes) {
  const std::size_t want = round_up(bytes == 0 ? 1 : bytes, kDirectAlignment);
  std::lock_guard<std::mutex> lock(mutex_);
  auto fit = free_by_size_.lower_bound(want);  // the smallest range that fits
  if (fit == free_by_size_.end()) {
    ++exhausted_;
    return nullptr;
  }
  const std::size_t offset = fit->second, length = fit->first;
  free_by_size_.erase(fit);
  free_by_offset_.erase(offset);
  if (length > want) {
    free_by_offset_.emplace(offset + want, length - want);
    free_by_size_.emplace(length - want, offset + want);
  }
  free_bytes_ -= want;
  ++live_;
  ++allocations_;
  std::uint8_t* p = base_ + offset * kAddressSpread;
#ifdef PYKVSTORE_ASAN
  const std::size_t reach = (offset + want) * kAddressSpread;  // the end of this buffer's redzone
  if (reach > poisoned_) {
    // Ahead of the need (twice the reach, 16 MiB at least), so a free range
    // after the furthest buffer is poisoned too, in a few steps per pool.
    const std::size_t mark = std::min(capacity_ * kAddressSpread, std::max(2 * reach, reach + (16u << 20)));
    PYKVSTORE_ASAN_POISON(base_ + poisoned_, mark - poisoned_);
    poisoned_ = mark;
  }
#endif
  // Only what was asked for: the tail up to `want` and, under ASan, the
  // redzone of `want` bytes after it stay poisoned.
  PYKVSTORE_ASAN_UNPOISON(p, bytes == 0 ? 1 : bytes);
  return p;
}

void HostPool::release(std::uint8_t* p, std::size_t bytes) {
  const std::size_t length = round_up(bytes == 0 ? 1 : bytes, kDirectAlignment);
  if (!contains(p) || offset_of(p) + length > capacity_)
    throw std::invalid_argument("HostPool::release: the range is not from this pool");
  std::lock_guard<std::mutex> lock(mutex_);
  PYKVSTORE_ASAN_POISON(p, length);  // a use after release, or an overflow into it, is reported
  add_free(offset_of(p), length);
  free_bytes_ += length;
  --live_;
}

bool HostPool::contains(const void* p) const noexcept {
  auto* b = static_cast<const std::uint8_t*>(p);
  return b >= base_ && b < base_ + capacity_ * kAddressSpread;
}

PoolStats HostPool::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  PoolStats s;
  s.capacity = capacity_;
  s.free_bytes = free_bytes_;
  s.largest_free = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  s.live_buffers = live_;
  s.allocations = allocations_;
  s.exhausted = exhausted_;
  s.pinned = pinned_;
  s.huge_pages = huge_pages_;
  return s;
}

}  // namespace pykvstore
