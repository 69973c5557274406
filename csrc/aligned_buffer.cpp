#include "pykvstore/aligned_buffer.hpp"

#include "pykvstore/detail/asan.hpp"
#include "pykvstore/host_pool.hpp"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

namespace pykvstore {
namespace {

// Free blocks by capacity. Chunks of one store share a size, so exact-size
// reuse is enough.
struct BufferCache {
  std::mutex mutex;
  std::map<std::size_t, std::vector<void*>> free_blocks;
  std::size_t bytes = 0;
  std::size_t limit = 512u << 20;

  // Hands out a kept block with only its first `size` bytes addressable.
  void* take(std::size_t capacity, std::size_t size) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = free_blocks.find(capacity);
    if (it == free_blocks.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    bytes -= capacity;
    PYKVSTORE_ASAN_UNPOISON(p, size);
    return p;
  }

  bool keep(void* p, std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex);
    if (bytes + capacity > limit) return false;
    PYKVSTORE_ASAN_POISON(p, capacity);  // kept, not owned: any access until taken again is a bug
    free_blocks[capacity].push_back(p);
    bytes += capacity;
    return true;
  }

  void trim_to(std::size_t new_limit) {
    std::lock_guard<std::mutex> lock(mutex);
    limit = new_limit;
    for (auto& [cap, blocks] : free_blocks) {
      while (bytes > limit && !blocks.empty()) {
        PYKVSTORE_ASAN_UNPOISON(blocks.back(), cap);
        std::free(blocks.back());
        blocks.pop_back();
        bytes -= cap;
      }
    }
  }
};

BufferCache& cache() {
  static auto* c = new BufferCache();  // never destroyed: buffers may outlive static teardown
  return *c;
}

}  // namespace

void set_buffer_cache_limit(std::size_t bytes) { cache().trim_to(bytes); }

std::size_t buffer_cache_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().bytes;
}

AlignedBuffer::AlignedBuffer(std::size_t size) : AlignedBuffer(size, nullptr) {}

AlignedBuffer::AlignedBuffer(std::size_t size, std::shared_ptr<HostPool> pool)
    : size_(size), capacity_(round_up(size == 0 ? 1 : size, kDirectAlignment)) {
  // Under ASan only [0, size) is addressable: the pool leaves its rounding
  // tail poisoned, and the heap path poisons its own below.
  if (pool) data_ = pool->allocate(size);
  if (data_ != nullptr) {
    pool_ = std::move(pool);
    return;
  }
  void* p = cache().take(capacity_, size);
  if (p == nullptr) {
    if (posix_memalign(&p, kDirectAlignment, capacity_) != 0) throw std::bad_alloc();
    PYKVSTORE_ASAN_POISON(static_cast<std::uint8_t*>(p) + size, capacity_ - size);
  }
  data_ = static_cast<std::uint8_t*>(p);
}

AlignedBuffer::~AlignedBuffer() {
  if (pool_) {
    pool_->release(data_, capacity_);
    return;
  }
  if (!cache().keep(data_, capacity_)) {
    PYKVSTORE_ASAN_UNPOISON(data_, capacity_);  // the allocator's own bookkeeping takes over
    std::free(data_);
  }
}

const std::uint8_t* AlignedBuffer::direct_io_data(std::size_t length) const noexcept {
  // The padding stays addressable from here on (until the buffer is freed):
  // re-poisoning it after the write would race with another thread writing
  // the same buffer to a second file.
  const std::size_t padded = round_up(length, kDirectAlignment);
  if (padded > length && padded <= capacity_) PYKVSTORE_ASAN_UNPOISON(data_ + length, padded - length);
  return data_;
}

void AlignedBuffer::set_size(std::size_t size) {
  if (size > size_) throw std::length_error("AlignedBuffer::set_size cannot grow a buffer");
  PYKVSTORE_ASAN_POISON(data_ + size, size_ - size);  // bytes no read filled are not data
  size_ = size;
}

}  // namespace pykvstore
