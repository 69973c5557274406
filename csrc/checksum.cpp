#include "pykvstore/checksum.hpp"

#include <cstring>

namespace pykvstore {
namespace {

constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Little-endian loads (x86 and arm64 are little-endian; memcpy keeps it legal).
inline std::uint64_t load64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::uint32_t load32(const unsigned char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline std::uint64_t round(std::uint64_t acc, std::uint64_t lane) {
  acc += lane * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}

inline std::uint64_t merge(std::uint64_t acc, std::uint64_t v) {
  acc ^= round(0, v);
  return acc * kP1 + kP4;
}

}  // namespace

Xxh64::Xxh64(std::uint64_t seed) noexcept
    : v_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1}, seed_(seed) {}

void Xxh64::update(const void* data, std::size_t len) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* end = p + len;
  total_ += len;
  if (tail_len_ + len < 32) {
    std::memcpy(tail_ + tail_len_, p, len);
    tail_len_ += len;
    return;
  }
  if (tail_len_ > 0) {  // complete the stripe left over from the last piece
    std::size_t fill = 32 - tail_len_;
    std::memcpy(tail_ + tail_len_, p, fill);
    p += fill;
    for (int lane = 0; lane < 4; ++lane) v_[lane] = round(v_[lane], load64(tail_ + 8 * lane));
    tail_len_ = 0;
  }
  if (end - p >= 32) {
    // four independent lanes in registers: the loop runs at memory speed
    std::uint64_t v1 = v_[0], v2 = v_[1], v3 = v_[2], v4 = v_[3];
    const unsigned char* limit = end - 32;
    do {
      v1 = round(v1, load64(p));
      v2 = round(v2, load64(p + 8));
      v3 = round(v3, load64(p + 16));
      v4 = round(v4, load64(p + 24));
      p += 32;
    } while (p <= limit);
    v_[0] = v1, v_[1] = v2, v_[2] = v3, v_[3] = v4;
  }
  tail_len_ = static_cast<std::size_t>(end - p);
  std::memcpy(tail_, p, tail_len_);
}

std::uint64_t Xxh64::digest() const noexcept {
  std::uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    for (std::uint64_t v : v_) h = merge(h, v);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const unsigned char* p = tail_;
  const unsigned char* end = tail_ + tail_len_;
  for (; p + 8 <= end; p += 8) {
    h ^= round(0, load64(p));
    h = rotl(h, 27) * kP1 + kP4;
  }
  if (p + 4 <= end) {
    h ^= static_cast<std::uint64_t>(load32(p)) * kP1;
    h = rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= (*p) * kP5;
    h = rotl(h, 11) * kP1;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

std::uint64_t xxh64(const void* data, std::size_t len, std::uint64_t seed) noexcept {
  Xxh64 h(seed);
  h.update(data, len);
  return h.digest();
}

}  // namespace pykvstore
