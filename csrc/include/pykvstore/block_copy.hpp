// Moves KV between an engine's paged blocks and one contiguous chunk in host
// memory. Python describes the layout (a base address and element strides per
// layer, in the canonical axis order block, plane, token, head, channel); this
// code only moves bytes, with memcpy over the longest contiguous runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pykvstore {

// Where one plane (K, V or an MLA latent) of a block lies, in elements from the
// block's start. Planes usually share strides and sit one plane stride apart,
// but an engine may lay them out differently (vLLM's CPU backend keeps K
// transposed, channel-major, and V token-major inside a block).
struct PlaneStrides {
  std::int64_t offset, token, head, dim;
};

struct PagedLayout {
  std::vector<std::uintptr_t> layer_bases;  // address of element [0,0,0,0,0] of each layer
  std::int64_t stride_block;                // in elements
  std::vector<PlaneStrides> planes;         // one entry per plane
  std::int64_t block_size, heads, head_dim;
  std::size_t itemsize;
};

// Chunk layout: (layers, planes, blocks * block_size, heads, head_dim), contiguous.
// Gather copies whole blocks; scatter writes chunk tokens [skip, end) only.
// max_threads caps the threads a large copy is split over (0: automatic);
// a caller whose I/O threads are busy passes 1.
void gather_blocks(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                   void* chunk, unsigned max_threads = 0);
void scatter_blocks(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                    const void* chunk, std::int64_t skip, unsigned max_threads = 0);

// Scatter fused with verification, on one thread: the XXH3-64 of the whole chunk
// (every token, skipped or not) is computed unit by unit, each (layer, plane)
// hashed just before it is copied while it is still in cache, so the chunk is
// read from memory once. The blocks are written before the hash is known: a
// caller that finds a mismatch must treat these blocks as not loaded.
std::uint64_t scatter_verified(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                               const void* chunk, std::int64_t skip);

// One contiguous span to move between engine memory and the chunk.
struct CopyRun {
  std::uintptr_t engine;
  std::uintptr_t chunk;
  std::size_t bytes;
};

// The spans gather/scatter would copy, merged where contiguous on both sides,
// for a copier that is not memcpy (DMA into device memory). Addresses are only
// computed, never touched, so the layout may describe device memory.
std::vector<CopyRun> block_runs(const PagedLayout& layout, const std::int64_t* block_ids, std::size_t num_blocks,
                                std::uintptr_t chunk, std::int64_t skip);

}  // namespace pykvstore
