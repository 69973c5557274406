#include "pykvstore/block_copy.hpp"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

namespace pykvstore {
namespace {

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

// Every (layer, plane, block) of layers [first_layer, last_layer) that holds
// chunk tokens [skip, end): fn(plane strides, engine block, chunk block, t0, t1).
template <typename Fn>
void for_each_block(const PagedLayout& L, std::size_t first_layer, std::size_t last_layer, const std::int64_t* ids,
                    std::size_t nb, unsigned char* chunk, std::int64_t skip, Fn&& fn) {
  const std::size_t item = L.itemsize;
  const std::int64_t block_elems = L.block_size * L.heads * L.head_dim;
  for (std::size_t layer = first_layer; layer < last_layer; ++layer) {
    auto* base = reinterpret_cast<unsigned char*>(L.layer_bases[layer]);
    const std::int64_t planes = static_cast<std::int64_t>(L.planes.size());
    for (std::int64_t p = 0; p < planes; ++p) {
      const PlaneStrides& P = L.planes[p];
      unsigned char* plane_chunk = chunk + ((layer * planes + p) * nb) * block_elems * item;
      for (std::size_t j = 0; j < nb; ++j) {
        std::int64_t first = static_cast<std::int64_t>(j) * L.block_size;
        std::int64_t t0 = skip > first ? skip - first : 0;
        if (t0 >= L.block_size) continue;
        unsigned char* engine = base + (ids[j] * L.stride_block + P.offset) * item;
        fn(P, engine, plane_chunk + j * block_elems * item, t0, L.block_size);
      }
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

void copy_layers(const PagedLayout& L, std::size_t first_layer, std::size_t last_layer,
                 const std::int64_t* ids, std::size_t nb, unsigned char* chunk, std::int64_t skip,
                 bool to_chunk) {
  auto runs = [to_chunk](unsigned char* e, unsigned char* c, std::size_t n) {
    if (to_chunk)
      std::memcpy(c, e, n);
    else
      std::memcpy(e, c, n);
  };
  for_each_block(L, first_layer, last_layer, ids, nb, chunk, skip,
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
}

// Large copies are split by layer over a few threads: one core's memcpy does
// not saturate host memory bandwidth.
constexpr std::size_t kBytesPerThread = 8u << 20;
constexpr unsigned kMaxThreads = 4;

void copy_all(const PagedLayout& L, const std::int64_t* ids, std::size_t nb, unsigned char* chunk,
              std::int64_t skip, bool to_chunk, unsigned max_threads) {
  const std::size_t layers = L.layer_bases.size();
  const std::size_t bytes = layers * L.planes.size() * nb * L.block_size * L.heads * L.head_dim * L.itemsize;
  std::size_t threads = std::min<std::size_t>({std::max(1u, std::thread::hardware_concurrency()),
                                               max_threads ? max_threads : kMaxThreads, layers,
                                               bytes / kBytesPerThread});
  if (threads <= 1) {
    copy_layers(L, 0, layers, ids, nb, chunk, skip, to_chunk);
    return;
  }
  std::vector<std::thread> pool;
  const std::size_t per = (layers + threads - 1) / threads;
  for (std::size_t t = 1; t < threads; ++t) {
    std::size_t lo = t * per, hi = std::min(layers, lo + per);
    if (lo < hi) pool.emplace_back(copy_layers, std::cref(L), lo, hi, ids, nb, chunk, skip, to_chunk);
  }
  copy_layers(L, 0, std::min(layers, per), ids, nb, chunk, skip, to_chunk);
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
  for_each_block(layout, 0, layout.layer_bases.size(), block_ids, num_blocks, reinterpret_cast<unsigned char*>(chunk),
                 skip, [&](const PlaneStrides& P, unsigned char* e, unsigned char* c, std::int64_t t0,
                           std::int64_t t1) { for_each_run(layout, P, e, c, t0, t1, add); });
  return runs;
}

}  // namespace pykvstore
