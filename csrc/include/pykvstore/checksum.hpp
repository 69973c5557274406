// XXH64 (the published xxHash 64-bit algorithm, seed 0): the payload checksum
// of chunk files, computed where the bytes are (an I/O thread after a read).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pykvstore {

std::uint64_t xxh64(const void* data, std::size_t len, std::uint64_t seed = 0) noexcept;

// The same hash fed in pieces, so a load can verify each piece of a chunk
// while it is still in cache from being copied. Any split gives the one-shot value.
class Xxh64 {
 public:
  explicit Xxh64(std::uint64_t seed = 0) noexcept;
  void update(const void* data, std::size_t len) noexcept;
  std::uint64_t digest() const noexcept;

 private:
  std::uint64_t v_[4];
  std::uint64_t seed_;
  std::uint64_t total_ = 0;
  unsigned char tail_[32];
  std::size_t tail_len_ = 0;  // bytes in tail_ not yet folded into v_
};

}  // namespace pykvstore
