// HostPool: best fit, coalescing on release, page rounding and exhaustion,
// checked against a page-bitmap model over thousands of random operations, and
// from several threads at once (the TSan build runs this too).
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "check.hpp"
#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/host_pool.hpp"

using pykvstore::HostPool;
using pykvstore::kDirectAlignment;
constexpr std::size_t P = kDirectAlignment;

namespace {

std::size_t off(const HostPool& pool, const std::uint8_t* p) { return pool.offset_of(p) / P; }

void best_fit_picks_the_smallest_hole() {
  HostPool pool(64 * P, false, false);
  // live: a(8) b(1) c(4) d(1) e(2) f(1) g(rest); then holes of 8, 4 and 2 pages
  std::uint8_t* a = pool.allocate(8 * P);
  std::uint8_t* b = pool.allocate(1 * P);
  std::uint8_t* c = pool.allocate(4 * P);
  std::uint8_t* d = pool.allocate(1 * P);
  std::uint8_t* e = pool.allocate(2 * P);
  std::uint8_t* f = pool.allocate(1 * P);
  std::uint8_t* g = pool.allocate(47 * P);
  CHECK(a && b && c && d && e && f && g);
  CHECK_EQ(pool.stats().free_bytes, 0u);
  CHECK(pool.allocate(1) == nullptr);
  CHECK_EQ(pool.stats().exhausted, 1u);
  pool.release(a, 8 * P);
  pool.release(c, 4 * P);
  pool.release(e, 2 * P);
  CHECK_EQ(pool.stats().largest_free, 8 * P);
  std::uint8_t* x = pool.allocate(3 * P);  // fits 8 and 4: takes the 4-page hole
  CHECK_EQ(off(pool, x), 9u);
  std::uint8_t* y = pool.allocate(2 * P);  // the 2-page hole exactly, not the rest of c's
  CHECK_EQ(off(pool, y), 14u);
  std::uint8_t* z = pool.allocate(P + 1);  // rounds up to 2 pages: the 8-page hole (1 left in c's)
  CHECK_EQ(off(pool, z), 0u);
  std::uint8_t* w = pool.allocate(1);  // one page: the single page left after x
  CHECK_EQ(off(pool, w), 12u);
  CHECK_EQ(pool.stats().free_bytes, 6 * P);
  CHECK_EQ(pool.stats().largest_free, 6 * P);
  for (auto [p, n] : {std::pair{b, 1}, {d, 1}, {f, 1}, {g, 47}, {x, 3}, {y, 2}, {z, 2}, {w, 1}})
    pool.release(p, n * P);
  auto s = pool.stats();
  CHECK_EQ(s.free_bytes, 64 * P);
  CHECK_EQ(s.largest_free, 64 * P);  // coalesced back into one range
  CHECK_EQ(s.live_buffers, 0u);
  CHECK_EQ(s.allocations, 11u);
}

void release_coalesces_with_either_neighbour() {
  // Release orders: the middle last (joins both), left to right, right to left.
  for (int order = 0; order < 3; ++order) {
    HostPool pool(3 * P, false, false);
    std::uint8_t* p[3] = {pool.allocate(P), pool.allocate(P), pool.allocate(P)};
    int seq[3][3] = {{0, 2, 1}, {0, 1, 2}, {2, 1, 0}};
    std::size_t largest[3][3] = {{1, 1, 3}, {1, 2, 3}, {1, 2, 3}};
    for (int i = 0; i < 3; ++i) {
      pool.release(p[seq[order][i]], P);
      CHECK_EQ(pool.stats().largest_free, largest[order][i] * P);
    }
    CHECK(pool.allocate(3 * P) == reinterpret_cast<std::uint8_t*>(pool.base()));
  }
}

void foreign_ranges_are_refused() {
  HostPool pool(4 * P, false, false);
  std::vector<std::uint8_t> heap(2 * P);
  bool threw = false;
  try {
    pool.release(heap.data(), P);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  std::uint8_t* p = pool.allocate(2 * P);
  threw = false;
  try {
    pool.release(p + 2 * P, 4 * P);  // runs past the end
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  pool.release(p, 2 * P);
}

// The pool against a bitmap of pages: allocations never overlap, each is a
// best fit among the free runs, and free space is always fully coalesced.
void random_operations_match_a_model() {
  const std::size_t pages = 256;
  HostPool pool(pages * P, false, false);
  std::vector<int> owner(pages, -1);
  std::vector<std::pair<std::uint8_t*, std::size_t>> live;
  std::mt19937 rng(12345);
  auto runs = [&] {  // free runs (start, length) of the model
    std::vector<std::pair<std::size_t, std::size_t>> r;
    for (std::size_t i = 0; i < pages;) {
      if (owner[i] != -1) { ++i; continue; }
      std::size_t j = i;
      while (j < pages && owner[j] == -1) ++j;
      r.push_back({i, j - i});
      i = j;
    }
    return r;
  };
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 2) {
      std::size_t want = 1 + rng() % 24;
      auto free_runs = runs();
      std::size_t best = 0;
      for (auto [s, n] : free_runs)
        if (n >= want && (best == 0 || n < best)) best = n;
      std::uint8_t* p = pool.allocate(want * P - rng() % P);
      if (best == 0) {
        CHECK(p == nullptr);
        continue;
      }
      CHECK(p != nullptr);
      if (p == nullptr) return;
      std::size_t o = off(pool, p);
      std::size_t run_len = 0;
      for (auto [s, n] : free_runs)
        if (o >= s && o < s + n) run_len = n;
      CHECK_EQ(run_len, best);  // best fit: the smallest run that holds it
      for (std::size_t i = o; i < o + want; ++i) {
        CHECK(owner[i] == -1);
        owner[i] = step;
      }
      live.push_back({p, want});
    } else {
      std::size_t k = rng() % live.size();
      auto [p, want] = live[k];
      pool.release(p, want * P);
      for (std::size_t i = off(pool, p); i < off(pool, p) + want; ++i) owner[i] = -1;
      live[k] = live.back();
      live.pop_back();
    }
    auto s = pool.stats();
    auto free_runs = runs();
    std::size_t free_pages = 0, largest = 0;
    for (auto [st, n] : free_runs) {
      free_pages += n;
      largest = std::max(largest, n);
    }
    CHECK_EQ(s.free_bytes, free_pages * P);
    CHECK_EQ(s.largest_free, largest * P);  // an uncoalesced pool would report less
    CHECK_EQ(s.live_buffers, live.size());
    if (pykvstore_test::failures() > 20) return;
  }
}

void many_threads_share_one_pool() {
  auto pool = std::make_shared<HostPool>(64 * P, false, false);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([pool, t] {
      for (int i = 0; i < 2000; ++i) {
        pykvstore::AlignedBuffer buf(1 + (i * 7 + t) % (3 * P), pool);
        buf.data()[0] = static_cast<std::uint8_t>(i);
        buf.data()[buf.size() - 1] = static_cast<std::uint8_t>(t);
      }
    });
  for (auto& th : threads) th.join();
  auto s = pool->stats();
  CHECK_EQ(s.free_bytes, 64 * P);
  CHECK_EQ(s.largest_free, 64 * P);
  CHECK_EQ(s.live_buffers, 0u);
}

// How many of the pages at [p, p + n) are faulted in (mincore); -1 when it failed.
long resident_pages(std::uintptr_t p, std::size_t n) {
  std::vector<unsigned char> vec((n + P - 1) / P);
  if (::mincore(reinterpret_cast<void*>(p), n, vec.data()) != 0) return -1;
  return static_cast<long>(std::count_if(vec.begin(), vec.end(), [](unsigned char v) { return (v & 1) != 0; }));
}

// prefault commits the pages its offsets live at (twice the addresses under
// ASan) and no more, keeps a live buffer's bytes, is clamped to the capacity,
// and does nothing once stopped.
void prefault_commits_the_first_pages_only() {
  constexpr std::size_t S = pykvstore::kAddressSpread;
  HostPool pool(48u << 20, false, false);
  std::uint8_t* live = pool.allocate(3 * P);
  CHECK(live != nullptr);
  std::memset(live, 0xA5, 3 * P);
  const std::size_t want = (3u << 20) + 1, pages = want / P + 1;  // rounded up to whole pages
  const std::size_t done = pool.prefault(want);
  if (done == 0 && errno == EINVAL) {
    std::printf("prefault: MADV_POPULATE_WRITE unsupported by this kernel, skipped\n");
    return;
  }
  CHECK_EQ(done, pages * P);
  CHECK_EQ(resident_pages(pool.base(), pages * P * S), static_cast<long>(pages * S));
  CHECK_EQ(resident_pages(pool.base() + pages * P * S, 4u << 20), 0L);  // beyond it, untouched
  CHECK(live[0] == 0xA5 && live[3 * P - 1] == 0xA5);                     // the kernel fills missing pages only
  CHECK_EQ(pool.prefault(std::size_t{1} << 40), 48u << 20);              // no further than the pool
  CHECK_EQ(resident_pages(pool.base(), (48u << 20) * S), static_cast<long>((48u << 20) / P * S));
  pool.release(live, 3 * P);

  HostPool stopped(8u << 20, false, false);
  stopped.stop_prefault();  // a store closing before its prefault thread began
  CHECK_EQ(stopped.prefault(4u << 20), 0u);
  CHECK_EQ(resident_pages(stopped.base(), (8u << 20) * S), 0L);
}

}  // namespace

int main() {
  prefault_commits_the_first_pages_only();
  best_fit_picks_the_smallest_hole();
  release_coalesces_with_either_neighbour();
  foreign_ranges_are_refused();
  random_operations_match_a_model();
  many_threads_share_one_pool();
  return pykvstore_test::finish("test_host_pool");
}
