// Chained chunk keys, the format pykvstore/keys.py defines: chunk i's key is
// XXH3-128(key[i-1] || chunk i's token bytes), key[-1] the namespace digest,
// each key the canonical 16-byte digest (high half first, big-endian). Runs on
// the caller's thread (a lookup, put or get); the scheduler asks for a long
// prompt's keys every step, so one call derives them all.
#pragma once

#include <cstddef>

namespace pykvstore {

constexpr std::size_t kChunkKeyBytes = 16;

// Keys of the `chunks` full chunks of `data` (chunk_bytes each) under `root`,
// written to out[16 * i ...]; out holds 16 * chunks bytes.
void chain_xxh3_128(const unsigned char* root, std::size_t root_len, const unsigned char* data,
                    std::size_t chunk_bytes, std::size_t chunks, unsigned char* out) noexcept;

// Lower-case hex of in[0, n) into out[0, 2n).
void to_hex(const unsigned char* in, std::size_t n, char* out) noexcept;

}  // namespace pykvstore
