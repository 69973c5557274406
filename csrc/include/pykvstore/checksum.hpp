// XXH64 (the published xxHash 64-bit algorithm, seed 0): the payload checksum
// of chunk files, computed where the bytes are (an I/O thread after a read).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pykvstore {

std::uint64_t xxh64(const void* data, std::size_t len, std::uint64_t seed = 0) noexcept;

}  // namespace pykvstore
