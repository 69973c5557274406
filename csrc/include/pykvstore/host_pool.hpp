// One large host region carved into chunk-sized buffers. Where a GPU exists the
// region is pinned (page-locked), so a chunk kept here feeds DMA directly;
// elsewhere it is anonymous page-aligned memory whose pages stay faulted in
// across reuse. Thread-safe; allocation is best fit with coalescing on free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

namespace pykvstore {

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

  // `bytes` rounded up to the page; nullptr when no free range fits.
  std::uint8_t* allocate(std::size_t bytes);
  // Returns a range allocate() handed out (same rounded size).
  void release(std::uint8_t* p, std::size_t bytes);
  bool contains(const void* p) const noexcept;
  PoolStats stats() const;
  std::uintptr_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(base_); }

 private:
  void add_free(std::size_t offset, std::size_t length);  // coalesces with neighbours

  std::uint8_t* base_ = nullptr;
  std::size_t capacity_ = 0;
  bool pinned_ = false;
  bool huge_pages_ = false;
  mutable std::mutex mutex_;
  std::map<std::size_t, std::size_t> free_by_offset_;     // offset -> length
  std::multimap<std::size_t, std::size_t> free_by_size_;  // length -> offset
  std::size_t free_bytes_ = 0;
  std::size_t live_ = 0;
  std::uint64_t allocations_ = 0;
  std::uint64_t exhausted_ = 0;
};

}  // namespace pykvstore
