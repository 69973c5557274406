// The block-run builder (block_runs): the spans a DMA copier replays. Checked
// by replaying them with memcpy against gather_blocks/scatter_blocks on real
// host memory, for block-contiguous and scattered layouts, with and without a
// skip, and by the exact number of runs where contiguous spans must merge.
#include <cstring>
#include <numeric>
#include <vector>

#include "check.hpp"
#include "pykvstore/block_copy.hpp"

using namespace pykvstore;

namespace {

struct Engine {
  std::vector<std::uint16_t> mem;  // all layers, one after another
  PagedLayout layout;
};

// Canonical (B, planes, T, H, D) strides for a named layout of 2-byte elements.
Engine make(const char* form, std::int64_t layers, std::int64_t blocks, std::int64_t bs, std::int64_t heads,
            std::int64_t hd) {
  Engine e;
  const std::int64_t per_layer = blocks * 2 * bs * heads * hd;
  e.mem.resize(layers * per_layer);
  std::iota(e.mem.begin(), e.mem.end(), std::uint16_t(1));
  e.layout.itemsize = 2;
  e.layout.block_size = bs;
  e.layout.heads = heads;
  e.layout.head_dim = hd;
  for (std::int64_t l = 0; l < layers; ++l)
    e.layout.layer_bases.push_back(reinterpret_cast<std::uintptr_t>(e.mem.data() + l * per_layer));
  const std::int64_t blk = bs * heads * hd;
  if (std::strcmp(form, "2BTHD") == 0) {  // planes outermost: a plane's blocks are adjacent
    e.layout.stride_block = blk;
    e.layout.planes = {{0, heads * hd, hd, 1}, {blocks * blk, heads * hd, hd, 1}};
  } else if (std::strcmp(form, "B2THD") == 0) {  // K and V of a block side by side
    e.layout.stride_block = 2 * blk;
    e.layout.planes = {{0, heads * hd, hd, 1}, {blk, heads * hd, hd, 1}};
  } else {  // BHTC: head-major, K|V packed in the channel axis
    e.layout.stride_block = 2 * blk;
    e.layout.planes = {{0, 2 * hd, bs * 2 * hd, 1}, {hd, 2 * hd, bs * 2 * hd, 1}};
  }
  return e;
}

void replay(const std::vector<CopyRun>& runs, bool to_chunk) {
  for (const CopyRun& r : runs) {
    if (to_chunk) std::memcpy(reinterpret_cast<void*>(r.chunk), reinterpret_cast<void*>(r.engine), r.bytes);
    else std::memcpy(reinterpret_cast<void*>(r.engine), reinterpret_cast<void*>(r.chunk), r.bytes);
  }
}

void runs_replay_like_gather_and_scatter(const char* form, std::vector<std::int64_t> ids, std::int64_t skip,
                                         std::int64_t heads = 2) {
  const std::int64_t layers = 3, blocks = 16, bs = 4, hd = 8;
  Engine src = make(form, layers, blocks, bs, heads, hd);
  const std::size_t chunk_elems = layers * 2 * ids.size() * bs * heads * hd;
  std::vector<std::uint16_t> want(chunk_elems, 0), got(chunk_elems, 0);
  gather_blocks(src.layout, ids.data(), ids.size(), want.data(), 1);
  auto runs = block_runs(src.layout, ids.data(), ids.size(), reinterpret_cast<std::uintptr_t>(got.data()), 0);
  replay(runs, true);
  CHECK(want == got);
  std::size_t bytes = 0;
  for (auto& r : runs) bytes += r.bytes;
  CHECK_EQ(bytes, chunk_elems * 2);  // every byte once
  // scatter: tokens [skip, end) only, into a second engine
  Engine a = make(form, layers, blocks, bs, heads, hd), b = make(form, layers, blocks, bs, heads, hd);
  for (auto& x : a.mem) x ^= 0x5555;
  for (auto& x : b.mem) x ^= 0x5555;
  scatter_blocks(a.layout, ids.data(), ids.size(), want.data(), skip, 1);
  replay(block_runs(b.layout, ids.data(), ids.size(), reinterpret_cast<std::uintptr_t>(want.data()), skip), false);
  CHECK(a.mem == b.mem);
  std::size_t skipped = 0;
  for (auto& r : block_runs(b.layout, ids.data(), ids.size(), reinterpret_cast<std::uintptr_t>(want.data()), skip))
    skipped += r.bytes;
  CHECK_EQ(skipped, chunk_elems * 2 - layers * 2 * skip * heads * hd * 2);
}

std::size_t count_runs(const char* form, std::vector<std::int64_t> ids, std::int64_t skip = 0) {
  Engine e = make(form, 3, 16, 4, 2, 8);
  std::vector<std::uint16_t> chunk(3 * 2 * ids.size() * 4 * 2 * 8);
  return block_runs(e.layout, ids.data(), ids.size(), reinterpret_cast<std::uintptr_t>(chunk.data()), skip).size();
}

}  // namespace

int main() {
  for (const char* form : {"2BTHD", "B2THD", "BHTC"})
    for (std::int64_t skip : {0, 1, 4, 9, 15}) {
      runs_replay_like_gather_and_scatter(form, {3, 4, 5, 9}, skip);
      runs_replay_like_gather_and_scatter(form, {15, 0, 7, 6}, skip);
    }
  // BHTC with one head, one block, skip 3: K of token 3 ends where V of token 3
  // starts in the engine, but the chunk has V's planes elsewhere: no merge there.
  runs_replay_like_gather_and_scatter("BHTC", {5}, 3, 1);
  // 2BTHD: blocks 3,4,5 of a plane are adjacent in the engine and in the chunk:
  // one run for them, one for block 9, per (layer, plane).
  CHECK_EQ(count_runs("2BTHD", {3, 4, 5, 9}), 3u * 2 * 2);
  CHECK_EQ(count_runs("2BTHD", {9, 5, 4, 3}), 3u * 2 * 4);  // descending: nothing continues
  // B2THD: the other plane sits between a plane's blocks: one run per block.
  CHECK_EQ(count_runs("B2THD", {3, 4, 5, 9}), 3u * 2 * 4);
  // BHTC: each (block, plane, token, head) row of 8 channels is its own run.
  CHECK_EQ(count_runs("BHTC", {3, 4}), 3u * 2 * 2 * 4 * 2);
  // a skip inside block 3 leaves a partial first run, still merged with 4 and 5
  CHECK_EQ(count_runs("2BTHD", {3, 4, 5, 9}, 2), 3u * 2 * 2);
  CHECK_EQ(count_runs("2BTHD", {3, 4, 5, 9}, 12), 3u * 2 * 1);  // only block 9 remains
  return pykvstore_test::finish("test_block_runs");
}
