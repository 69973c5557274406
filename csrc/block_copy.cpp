#include "pykvstore/block_copy.hpp"

#include "pykvstore/checksum.hpp"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace pykvstore {
namespace {

// Writes into the engine's blocks with non-temporal stores where the run is
// large and aligned: the blocks are not read again by this thread, and plain
// stores would first read every destination line from memory (a third of the
// traffic of a scatter). The caller fences once when its runs are done.
constexpr std::size_t kStreamMin = 4096;

inline void write_run(unsigned char* dst, const unsigned char* src, std::size_t n) {
#if defined(__SSE2__)
  if (n >= kStreamMin && (reinterpret_cast<std::uintptr_t>(dst) & 15) == 0 && n % 64 == 0) {
    auto* d = reinterpret_cast<__m128i*>(dst);
    const auto* s = reinterpret_cast<const __m128i*>(src);
    for (std::size_t i = 0; i < n / 16; i += 4) {
      __m128i a = _mm_loadu_si128(s + i), b = _mm_loadu_si128(s + i + 1);
      __m128i c = _mm_loadu_si128(s + i + 2), e = _mm_loadu_si128(s + i + 3);
      _mm_stream_si128(d + i, a);
      _mm_stream_si128(d + i + 1, b);
      _mm_stream_si128(d + i + 2, c);
      _mm_stream_si128(d + i + 3, e);
    }
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

// Orders the streamed stores before whatever the thread does next (signals completion).
inline void fence_writes() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Visits the contiguous runs that hold tokens [t0, t1) of one (layer, plane,
// block): fn(engine address, chunk address, bytes), as long as the layout allows.
template <typename Fn>
void for_each_run(const PagedLayout& L, const PlaneStrides& P, unsigned char* engine, unsigned char* chunk,
                  std::int64_t t0, std::int64_t t1, Fn&& fn) {
  const std::size_t item = L.itemsize;
  const std::int64_t row = L.heads * L.head_dim;  // elements of one token in the chunk
  const bool dim_contig = P.dim == 1;
  const bool token_contig = dim_contig && (P.head == L.head_dim || L.heads == 1);
  const bool block_contig = token_contig && P.token == row;
  if (block_contig) {
    fn(engine + t0 * P.token * item, chunk + t0 * row * item, (t1 - t0) * row * item);
    return;
  }
  for (std::int64_t t = t0; t < t1; ++t) {
    unsigned char* e_tok = engine + t * P.token * item;
    unsigned char* c_tok = chunk + t * row * item;
    if (token_contig) {
      fn(e_tok, c_tok, row * item);
      continue;
    }
    for (std::int64_t h = 0; h < L.heads; ++h) {
      unsigned char* e_row = e_tok + h * P.head * item;
      unsigned char* c_row = c_tok + h * L.head_dim * item;
      if (dim_contig) {
        fn(e_row, c_row, L.head_dim * item);
        continue;
      }
      for (std::int64_t d = 0; d < L.head_dim; ++d) fn(e_row + d * P.dim * item, c_row + d * item, item);
    }
  }
}

// Every block of units [first_unit, last_unit) that holds chunk tokens
// [skip, end): fn(plane strides, engine block, chunk block, t0, t1). A unit is
// one (layer, plane), numbered layer * planes + plane: the chunk's sections in order.
template <typename Fn>
void for_each_block(const PagedLayout& L, std::size_t first_unit, std::size_t last_unit, const std::int64_t* ids,
                    std::size_t nb, unsigned char* chunk, std::int64_t skip, Fn&& fn) {
  const std::size_t item = L.itemsize;
  const std::int64_t block_elems = L.block_size * L.heads * L.head_dim;
  const std::size_t planes = L.planes.size();
  for (std::size_t unit = first_unit; unit < last_unit; ++unit) {
    auto* base = reinterpret_cast<unsigned char*>(L.layer_bases[unit / planes]);
    const PlaneStrides& P = L.planes[unit % planes];
    unsigned char* unit_chunk = chunk + unit * nb * block_elems * item;
    for (std::size_t j = 0; j < nb; ++j) {
      std::int64_t first = static_cast<std::int64_t>(j) * L.block_size;
      std::int64_t t0 = skip > first ? skip - first : 0;
      if (t0 >= L.block_size) continue;
      unsigned char* engine = base + (ids[j] * L.stride_block + P.offset) * item;
      fn(P, engine, unit_chunk + j * block_elems * item, t0, L.block_size);
    }
  }
}

// A block whose channels are not contiguous (vLLM's CPU backend keeps K
// channel-major): element copies in tiles of (token, channel), the innermost
// loop running along the side being written where it is contiguous.
template <typename E, bool ToChunk>
void copy_elements(const PagedLayout& L, const PlaneStrides& P, unsigned char* engine, unsigned char* chunk,
                   std::int64_t t0, std::int64_t t1) {
  constexpr std::int64_t kTile = 32;
  const std::int64_t row = L.heads * L.head_dim, st = P.token, sd = P.dim, dims = L.head_dim;
  for (std::int64_t h = 0; h < L.heads; ++h) {
    E* e = reinterpret_cast<E*>(engine) + h * P.head;
    E* c = reinterpret_cast<E*>(chunk) + h * dims;
    for (std::int64_t tt = t0; tt < t1; tt += kTile)
      for (std::int64_t dd = 0; dd < dims; dd += kTile) {
        const std::int64_t t_end = std::min(tt + kTile, t1), d_end = std::min(dd + kTile, dims);
        if (!ToChunk && st == 1) {  // writes into the engine: along its contiguous tokens
          for (std::int64_t d = dd; d < d_end; ++d) {
            E* ed = e + d * sd;
            for (std::int64_t t = tt; t < t_end; ++t) {
              if constexpr (ToChunk)
                c[t * row + d] = ed[t];
              else
                ed[t] = c[t * row + d];
            }
          }
        } else {
          for (std::int64_t t = tt; t < t_end; ++t)
            for (std::int64_t d = dd; d < d_end; ++d) {
              if constexpr (ToChunk)
                c[t * row + d] = e[t * st + d * sd];
              else
                e[t * st + d * sd] = c[t * row + d];
            }
        }
      }
  }
}

template <typename E>
void copy_elements(const PagedLayout& L, const PlaneStrides& P, unsigned char* engine, unsigned char* chunk,
                   std::int64_t t0, std::int64_t t1, bool to_chunk) {
  if (to_chunk)
    copy_elements<E, true>(L, P, engine, chunk, t0, t1);
  else
    copy_elements<E, false>(L, P, engine, chunk, t0, t1);
}

void copy_units(const PagedLayout& L, std::size_t first_unit, std::size_t last_unit,
                const std::int64_t* ids, std::size_t nb, unsigned char* chunk, std::int64_t skip,
                bool to_chunk) {
  auto runs = [to_chunk](unsigned char* e, unsigned char* c, std::size_t n) {
    if (to_chunk)
      std::memcpy(c, e, n);
    else
      write_run(e, c, n);
  };
  for_each_block(L, first_unit, last_unit, ids, nb, chunk, skip,
                 [&](const PlaneStrides& P, unsigned char* e, unsigned char* c, std::int64_t t0, std::int64_t t1) {
                   if (P.dim == 1) return for_each_run(L, P, e, c, t0, t1, runs);
                   switch (L.itemsize) {
                     case 1: return copy_elements<std::uint8_t>(L, P, e, c, t0, t1, to_chunk);
                     case 2: return copy_elements<std::uint16_t>(L, P, e, c, t0, t1, to_chunk);
                     case 4: return copy_elements<std::uint32_t>(L, P, e, c, t0, t1, to_chunk);
                     case 8: return copy_elements<std::uint64_t>(L, P, e, c, t0, t1, to_chunk);
                     default: return for_each_run(L, P, e, c, t0, t1, runs);
                   }
                 });
  if (!to_chunk) fence_writes();
}

// Large copies are split by layer over a few threads: one core's memcpy does
// not saturate host memory bandwidth.
constexpr std::size_t kBytesPerThread = 8u << 20;
constexpr unsigned kMaxThreads = 4;

void copy_all(const PagedLayout& L, const std::int64_t* ids, std::size_t nb, unsigned char* chunk,
              std::int64_t skip, bool to_chunk, unsigned max_threads) {
  const std::size_t layers = L.layer_bases.size(), planes = L.planes.size();
  const std::size_t bytes = layers * planes * nb * L.block_size * L.heads * L.head_dim * L.itemsize;
  std::size_t threads = std::min<std::size_t>({std::max(1u, std::thread::hardware_concurrency()),
                                               max_threads ? max_threads : kMaxThreads, layers,
                                               bytes / kBytesPerThread});
  if (threads <= 1) {
    copy_units(L, 0, layers * planes, ids, nb, chunk, skip, to_chunk);
    return;
  }
  std::vector<std::thread> pool;
  const std::size_t per = (layers + threads - 1) / threads;  // whole layers per thread
  for (std::size_t t = 1; t < threads; ++t) {
    std::size_t lo = t * per, hi = std::min(layers, lo + per);
    if (lo < hi) pool.emplace_back(copy_units, std::cref(L), lo * planes, hi * planes, ids, nb, chunk, skip, to_chunk);
  }
  copy_units(L, 0, std::min(layers, per) * planes, ids, nb, chunk, skip, to_chunk);
  for (auto& th : pool) th.join();
}

}  // namespace

void gather_blocks(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                   void* chunk, unsigned max_threads) {
  copy_all(layout, block_ids, num_blocks, static_cast<unsigned char*>(chunk), 0, true, max_threads);
}

void scatter_blocks(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                    const void* chunk, std::int64_t skip, unsigned max_threads) {
  copy_all(layout, block_ids, num_blocks, const_cast<unsigned char*>(static_cast<const unsigned char*>(chunk)),
           skip, false, max_threads);
}

std::uint64_t scatter_verified(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                               const void* chunk, std::int64_t skip) {
  auto* src = const_cast<unsigned char*>(static_cast<const unsigned char*>(chunk));
  const std::size_t units = layout.layer_bases.size() * layout.planes.size();
  const std::size_t unit_bytes = num_blocks * layout.block_size * layout.heads * layout.head_dim * layout.itemsize;
  Xxh3 hash;
  for (std::size_t u = 0; u < units; ++u) {
    hash.update(src + u * unit_bytes, unit_bytes);  // brings the unit into cache: the copy reads it from there
    copy_units(layout, u, u + 1, block_ids, num_blocks, src, skip, false);
  }
  return hash.digest();
}

std::vector<CopyRun> block_runs(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                                std::uintptr_t chunk, std::int64_t skip) {
  std::vector<CopyRun> runs;
  auto add = [&runs](unsigned char* e, unsigned char* c, std::size_t n) {
    if (!runs.empty()) {  // merge with the previous run where both sides continue it
      CopyRun& r = runs.back();
      if (r.engine + r.bytes == reinterpret_cast<std::uintptr_t>(e) &&
          r.chunk + r.bytes == reinterpret_cast<std::uintptr_t>(c)) {
        r.bytes += n;
        return;
      }
    }
    runs.push_back({reinterpret_cast<std::uintptr_t>(e), reinterpret_cast<std::uintptr_t>(c), n});
  };
  const std::size_t units = layout.layer_bases.size() * layout.planes.size();
  for_each_block(layout, 0, units, block_ids, num_blocks, reinterpret_cast<unsigned char*>(chunk), skip,
                 [&](const PlaneStrides& P, unsigned char* e, unsigned char* c, std::int64_t t0, std::int64_t t1) {
                   for_each_run(layout, P, e, c, t0, t1, add);
                 });
  return runs;
}

}  // namespace pykvstore
