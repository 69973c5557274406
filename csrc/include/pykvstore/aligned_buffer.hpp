// Page-aligned host memory: the staging area for chunk files. Alignment and a
// capacity rounded up to kDirectAlignment let O_DIRECT read and write it as is.
// Under ASan (`make sanitize-address`) only the first size() bytes are
// addressable; the rounding tail is poisoned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace pykvstore {

class HostPool;

constexpr std::size_t kDirectAlignment = 4096;

inline std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Freed buffers are kept for reuse, up to this many bytes in all: a fresh
// multi-megabyte allocation is mapped anew and every page faults and is
// zeroed on first touch, which costs as much as the copy it is for.
void set_buffer_cache_limit(std::size_t bytes);
std::size_t buffer_cache_bytes();

class AlignedBuffer {
 public:
  // `size` bytes are addressable; the allocation is rounded up to the alignment.
  explicit AlignedBuffer(std::size_t size);
  // From `pool` when it has room, else from the heap (the pool counts that).
  AlignedBuffer(std::size_t size, std::shared_ptr<HostPool> pool);
  ~AlignedBuffer();
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::uint8_t* data() noexcept { return data_; }
  const std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return capacity_; }
  bool from_pool() const noexcept { return pool_ != nullptr; }
  // Shrinks the visible size (a read that found a shorter file); never grows.
  void set_size(std::size_t size);
  // data(), for an O_DIRECT write of the first `length` bytes padded up to
  // the alignment. Under ASan the bytes past size() are poisoned (a write past
  // the buffer is reported); the kernel reads the padding as the last block's
  // tail, so this makes [length, round_up(length)) addressable first.
  const std::uint8_t* direct_io_data(std::size_t length) const noexcept;

 private:
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
  std::shared_ptr<HostPool> pool_;  // set only when the memory came from it
};

}  // namespace pykvstore
