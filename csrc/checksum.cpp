#include "pykvstore/checksum.hpp"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

// XXH64's final mix; XXH3 ends its shortest inputs with it too.
inline std::uint64_t avalanche64(std::uint64_t h) {
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  return h ^ (h >> 32);
}

inline std::uint64_t merge(std::uint64_t acc, std::uint64_t v) {
  acc ^= round(0, v);
  return acc * kP1 + kP4;
}

}  // namespace

std::uint64_t xxh64(const void* data, std::size_t len, std::uint64_t seed) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* end = p + len;
  std::uint64_t h;
  if (len >= 32) {
    std::uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const unsigned char* limit = end - 32;
    do {  // four independent lanes: the loop runs at memory speed
      v1 = round(v1, load64(p));
      v2 = round(v2, load64(p + 8));
      v3 = round(v3, load64(p + 16));
      v4 = round(v4, load64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge(h, v1);
    h = merge(h, v2);
    h = merge(h, v3);
    h = merge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<std::uint64_t>(len);
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
  return avalanche64(h);
}

// ---------------------------------------------------------------------------
// XXH3-64 (seed 0, the default 192-byte secret). Long inputs run 8 lanes of
// 32x32->64 multiplies per 64-byte stripe: no dependency chain between
// stripes, so it hashes several times faster than XXH64 and keeps up with
// the copy it verifies.

namespace {

constexpr std::uint64_t kPrime32_1 = 0x9E3779B1ULL;
constexpr std::uint64_t kPrime32_2 = 0x85EBCA77ULL;
constexpr std::uint64_t kPrime32_3 = 0xC2B2AE3DULL;
constexpr std::uint64_t kPrimeMx1 = 0x165667919E3779F9ULL;
constexpr std::uint64_t kPrimeMx2 = 0x9FB21C651E98DF25ULL;

constexpr std::size_t kSecretSize = 192;
alignas(64) constexpr unsigned char kSecret[kSecretSize] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};
constexpr std::size_t kStripe = 64;
constexpr std::size_t kStripesPerBlock = (kSecretSize - kStripe) / 8;  // 16: the secret advances 8 bytes a stripe
constexpr std::size_t kMidMax = 240;                                   // longer inputs take the stripe loop

inline std::uint64_t fold_mul(std::uint64_t a, std::uint64_t b) {  // 64x64->128, high ^ low
  unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
}

inline std::uint64_t avalanche3(std::uint64_t h) {
  h ^= h >> 37;
  h *= kPrimeMx1;
  return h ^ (h >> 32);
}

inline std::uint64_t mix16(const unsigned char* in, const unsigned char* secret) {
  return fold_mul(load64(in) ^ load64(secret), load64(in + 8) ^ load64(secret + 8));
}

std::uint64_t xxh3_short(const unsigned char* p, std::size_t len) {
  const unsigned char* s = kSecret;
  if (len == 0) return avalanche64(load64(s + 56) ^ load64(s + 64));
  if (len <= 3) {
    std::uint32_t combined = (static_cast<std::uint32_t>(p[0]) << 16) | (static_cast<std::uint32_t>(p[len >> 1]) << 24) |
                             static_cast<std::uint32_t>(p[len - 1]) | (static_cast<std::uint32_t>(len) << 8);
    return avalanche64(combined ^ static_cast<std::uint64_t>(load32(s) ^ load32(s + 4)));
  }
  if (len <= 8) {
    std::uint64_t v = load32(p + len - 4) + (static_cast<std::uint64_t>(load32(p)) << 32);
    std::uint64_t h = v ^ (load64(s + 8) ^ load64(s + 16));
    h ^= rotl(h, 49) ^ rotl(h, 24);
    h *= kPrimeMx2;
    h ^= (h >> 35) + len;
    h *= kPrimeMx2;
    return h ^ (h >> 28);
  }
  if (len <= 16) {
    std::uint64_t lo = load64(p) ^ (load64(s + 24) ^ load64(s + 32));
    std::uint64_t hi = load64(p + len - 8) ^ (load64(s + 40) ^ load64(s + 48));
    return avalanche3(len + __builtin_bswap64(lo) + hi + fold_mul(lo, hi));
  }
  std::uint64_t acc = len * kP1;
  if (len <= 128) {
    // pairs from both ends, widening: (0, len-16), (16, len-32), (32, len-48), (48, len-64)
    std::size_t pairs = (len - 1) / 32 + 1;
    for (std::size_t i = 0; i < pairs; ++i) {
      acc += mix16(p + 16 * i, s + 32 * i);
      acc += mix16(p + len - 16 * (i + 1), s + 32 * i + 16);
    }
    return avalanche3(acc);
  }
  for (std::size_t i = 0; i < 8; ++i) acc += mix16(p + 16 * i, s + 16 * i);
  acc = avalanche3(acc);
  for (std::size_t i = 8; i < len / 16; ++i) acc += mix16(p + 16 * i, s + 16 * (i - 8) + 3);
  acc += mix16(p + len - 16, s + 136 - 17);
  return avalanche3(acc);
}

// One stripe into the 8 accumulators: acc[i] += lo32(d^k) * hi32(d^k), acc[i^1] += d.
inline void accumulate_stripe(std::uint64_t* acc, const unsigned char* p, const unsigned char* secret) {
#if defined(__SSE2__)
  auto* a = reinterpret_cast<__m128i*>(acc);
  for (int j = 0; j < 4; ++j) {
    __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p) + j);
    __m128i k = _mm_xor_si128(d, _mm_loadu_si128(reinterpret_cast<const __m128i*>(secret) + j));
    __m128i prod = _mm_mul_epu32(k, _mm_shuffle_epi32(k, _MM_SHUFFLE(0, 3, 0, 1)));
    __m128i swapped = _mm_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));
    a[j] = _mm_add_epi64(a[j], _mm_add_epi64(prod, swapped));
  }
#else
  for (int i = 0; i < 8; ++i) {
    std::uint64_t d = load64(p + 8 * i), k = d ^ load64(secret + 8 * i);
    acc[i ^ 1] += d;
    acc[i] += (k & 0xFFFFFFFFULL) * (k >> 32);
  }
#endif
}

inline void scramble(std::uint64_t* acc, const unsigned char* secret) {
  for (int i = 0; i < 8; ++i) {
    std::uint64_t a = acc[i];
    a ^= a >> 47;
    a ^= load64(secret + 8 * i);
    acc[i] = a * kPrime32_1;
  }
}

constexpr std::size_t kMergeStart = 11;  // where the secret's bytes for the final merge begin

// The 64-bit digest of the 8 accumulators; XXH3-128 merges them twice, with two secrets and starts.
std::uint64_t merge_accs(const std::uint64_t* acc, const unsigned char* secret, std::uint64_t start) {
  for (int i = 0; i < 4; ++i)
    start += fold_mul(acc[2 * i] ^ load64(secret + 16 * i), acc[2 * i + 1] ^ load64(secret + 16 * i + 8));
  return avalanche3(start);
}

// ---------------------------------------------------------------------------
// XXH3-128's inputs of 240 bytes or less. Each length class mixes its bytes
// into a low and a high half with its own part of the secret; the published
// algorithm (seed 0), checked against the xxhash package by tests/test_keys.py.

struct Pair {
  std::uint64_t lo, hi;
};

inline Pair mul_full(std::uint64_t a, std::uint64_t b) {  // 64x64->128
  unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return {static_cast<std::uint64_t>(p), static_cast<std::uint64_t>(p >> 64)};
}

// 32 bytes (two 16-byte pieces) into both halves; each half also takes the other piece's sum.
inline void mix32(Pair& acc, const unsigned char* a, const unsigned char* b, const unsigned char* secret) {
  acc.lo += mix16(a, secret);
  acc.lo ^= load64(b) + load64(b + 8);
  acc.hi += mix16(b, secret + 16);
  acc.hi ^= load64(a) + load64(a + 8);
}

inline Hash128 finish_mid(const Pair& acc, std::uint64_t len) {
  std::uint64_t lo = acc.lo + acc.hi;
  std::uint64_t hi = acc.lo * kP1 + acc.hi * kP4 + len * kP2;
  return {avalanche3(lo), 0 - avalanche3(hi)};
}

Hash128 xxh3_128_short(const unsigned char* p, std::size_t len) {
  const unsigned char* s = kSecret;
  if (len == 0) return {avalanche64(load64(s + 64) ^ load64(s + 72)), avalanche64(load64(s + 80) ^ load64(s + 88))};
  if (len <= 3) {
    std::uint32_t lo = (static_cast<std::uint32_t>(p[0]) << 16) | (static_cast<std::uint32_t>(p[len >> 1]) << 24) |
                       static_cast<std::uint32_t>(p[len - 1]) | (static_cast<std::uint32_t>(len) << 8);
    std::uint32_t swapped = __builtin_bswap32(lo);
    std::uint32_t hi = (swapped << 13) | (swapped >> 19);
    return {avalanche64(lo ^ static_cast<std::uint64_t>(load32(s) ^ load32(s + 4))),
            avalanche64(hi ^ static_cast<std::uint64_t>(load32(s + 8) ^ load32(s + 12)))};
  }
  if (len <= 8) {
    std::uint64_t v = load32(p) + (static_cast<std::uint64_t>(load32(p + len - 4)) << 32);
    Pair m = mul_full(v ^ (load64(s + 16) ^ load64(s + 24)), kP1 + (static_cast<std::uint64_t>(len) << 2));
    m.hi += m.lo << 1;
    m.lo ^= m.hi >> 3;
    m.lo ^= m.lo >> 35;
    m.lo *= kPrimeMx2;
    m.lo ^= m.lo >> 28;
    return {m.lo, avalanche3(m.hi)};
  }
  if (len <= 16) {
    std::uint64_t in_lo = load64(p), in_hi = load64(p + len - 8);
    Pair m = mul_full(in_lo ^ in_hi ^ (load64(s + 32) ^ load64(s + 40)), kP1);
    m.lo += static_cast<std::uint64_t>(len - 1) << 54;
    in_hi ^= load64(s + 48) ^ load64(s + 56);
    m.hi += in_hi + (in_hi & 0xFFFFFFFFULL) * (kPrime32_2 - 1);
    m.lo ^= __builtin_bswap64(m.hi);
    Pair h = mul_full(m.lo, kP2);
    h.hi += m.hi * kP2;
    return {avalanche3(h.lo), avalanche3(h.hi)};
  }
  Pair acc{len * kP1, 0};
  if (len <= 128) {
    // pairs from both ends, the innermost first: (48, len-64), (32, len-48), (16, len-32), (0, len-16)
    for (std::size_t i = (len - 1) / 32 + 1; i-- > 0;) mix32(acc, p + 16 * i, p + len - 16 * (i + 1), s + 32 * i);
    return finish_mid(acc, len);
  }
  for (std::size_t i = 0; i < 4; ++i) mix32(acc, p + 32 * i, p + 32 * i + 16, s + 32 * i);
  acc.lo = avalanche3(acc.lo);
  acc.hi = avalanche3(acc.hi);
  for (std::size_t i = 4; i < len / 32; ++i) mix32(acc, p + 32 * i, p + 32 * i + 16, s + 3 + 32 * (i - 4));
  mix32(acc, p + len - 16, p + len - 32, s + 136 - 17 - 16);
  return finish_mid(acc, len);
}

}  // namespace

Xxh3::Xxh3() noexcept
    : acc_{kPrime32_3, kP1, kP2, kP3, kP4, kPrime32_2, kP5, kPrime32_1} {}

void Xxh3::consume(const unsigned char* p, std::size_t stripes) noexcept {
  while (stripes > 0) {
    std::size_t n = std::min(stripes, kStripesPerBlock - stripe_);
    for (std::size_t i = 0; i < n; ++i) accumulate_stripe(acc_, p + i * kStripe, kSecret + 8 * (stripe_ + i));
    p += n * kStripe;
    stripes -= n;
    stripe_ += n;
    if (stripe_ == kStripesPerBlock) {
      scramble(acc_, kSecret + kSecretSize - kStripe);
      stripe_ = 0;
    }
  }
}

void Xxh3::update(const void* data, std::size_t len) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  if (total_ < kMidMax) std::memcpy(head_ + total_, p, std::min(len, kMidMax - total_));
  total_ += len;
  // A stripe is consumed only once a byte after it is known: the input's
  // final stripe is hashed differently (in digest).
  if (pending_ > 0) {
    std::size_t take = std::min(kStripe - pending_, len);
    std::memcpy(buf_ + pending_, p, take);
    pending_ += take;
    p += take;
    len -= take;
    if (len == 0) return;
    consume(buf_, 1);
    std::memcpy(last_, buf_, kStripe);
    pending_ = 0;
  }
  if (len > kStripe) {
    std::size_t stripes = (len - 1) / kStripe;
    consume(p, stripes);
    p += stripes * kStripe;
    len -= stripes * kStripe;
    std::memcpy(last_, p - kStripe, kStripe);
  }
  std::memcpy(buf_, p, len);
  pending_ = len;
}

void Xxh3::final_acc(std::uint64_t* acc) const noexcept {
  std::memcpy(acc, acc_, sizeof acc_);
  unsigned char tail[kStripe];  // the input's last 64 bytes
  std::memcpy(tail, last_ + pending_, kStripe - pending_);
  std::memcpy(tail + kStripe - pending_, buf_, pending_);
  accumulate_stripe(acc, tail, kSecret + kSecretSize - kStripe - 7);
}

std::uint64_t Xxh3::digest() const noexcept {
  if (total_ <= kMidMax) return xxh3_short(head_, total_);
  alignas(16) std::uint64_t acc[8];
  final_acc(acc);
  return merge_accs(acc, kSecret + kMergeStart, total_ * kP1);
}

Hash128 Xxh3::digest128() const noexcept {
  if (total_ <= kMidMax) return xxh3_128_short(head_, total_);
  alignas(16) std::uint64_t acc[8];
  final_acc(acc);
  return {merge_accs(acc, kSecret + kMergeStart, total_ * kP1),
          merge_accs(acc, kSecret + kSecretSize - sizeof acc - kMergeStart, ~(total_ * kP2))};
}

std::uint64_t xxh3_64(const void* data, std::size_t len) noexcept {
  Xxh3 h;
  h.update(data, len);
  return h.digest();
}

Hash128 xxh3_128(const void* data, std::size_t len) noexcept {
  Xxh3 h;
  h.update(data, len);
  return h.digest128();
}

}  // namespace pykvstore
