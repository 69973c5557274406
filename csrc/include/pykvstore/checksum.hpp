// The payload checksums of chunk files, computed where the bytes are (an I/O
// thread after a read, or while it copies a mapped chunk into the blocks).
// XXH3-64 is the format's checksum; XXH64 is kept to verify chunks written
// before it (their headers name no algorithm). Both are the published
// xxHash algorithms with seed 0 (XXH3 with its default secret).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pykvstore {

std::uint64_t xxh64(const void* data, std::size_t len, std::uint64_t seed = 0) noexcept;

std::uint64_t xxh3_64(const void* data, std::size_t len) noexcept;

// XXH3-128 (seed 0, default secret): the chained chunk keys (chunk_keys.hpp).
// `high` is the digest's first 8 bytes in canonical (big-endian) form.
struct Hash128 {
  std::uint64_t low, high;
};
Hash128 xxh3_128(const void* data, std::size_t len) noexcept;

// XXH3-64 fed in pieces, so a load can verify a chunk section by section
// while each section is still in cache from being copied. Any split gives
// the one-shot value.
class Xxh3 {
 public:
  Xxh3() noexcept;
  void update(const void* data, std::size_t len) noexcept;
  std::uint64_t digest() const noexcept;
  Hash128 digest128() const noexcept;  // XXH3-128 of the same bytes

 private:
  void consume(const unsigned char* p, std::size_t stripes) noexcept;
  void final_acc(std::uint64_t* acc) const noexcept;  // inputs over 240 bytes: acc_ with the last stripe

  alignas(16) std::uint64_t acc_[8];
  std::size_t stripe_ = 0;   // stripes of the current block consumed
  std::uint64_t total_ = 0;  // bytes fed
  std::size_t pending_ = 0;  // bytes in buf_: the input's end, not consumed yet
  unsigned char buf_[64];
  unsigned char last_[64];   // the last stripe consumed
  unsigned char head_[240];  // the first bytes: inputs of 240 bytes or less hash differently
};

}  // namespace pykvstore
