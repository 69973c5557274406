#include "pykvstore/chunk_keys.hpp"

#include <cstdint>

#include "pykvstore/checksum.hpp"

namespace pykvstore {
namespace {

inline void store_be64(unsigned char* out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<unsigned char>(v);
    v >>= 8;
  }
}

}  // namespace

void chain_xxh3_128(const unsigned char* root, std::size_t root_len, const unsigned char* data,
                    std::size_t chunk_bytes, std::size_t chunks, unsigned char* out) noexcept {
  const unsigned char* prev = root;
  std::size_t prev_len = root_len;
  for (std::size_t i = 0; i < chunks; ++i) {
    Xxh3 h;  // fed in two pieces: no copy of the chunk behind its parent's key
    h.update(prev, prev_len);
    h.update(data + i * chunk_bytes, chunk_bytes);
    const Hash128 d = h.digest128();
    unsigned char* key = out + i * kChunkKeyBytes;
    store_be64(key, d.high);
    store_be64(key + 8, d.low);
    prev = key;
    prev_len = kChunkKeyBytes;
  }
}

void to_hex(const unsigned char* in, std::size_t n, char* out) noexcept {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[in[i] >> 4];
    out[2 * i + 1] = kDigits[in[i] & 0xF];
  }
}

}  // namespace pykvstore
