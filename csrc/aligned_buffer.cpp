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

  void* take(std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = free_blocks.find(capacity);
    if (it == free_blocks.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    bytes -= capacity;
    PYKVSTORE_ASAN_UNPOISON(p, capacity);
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
  if (pool) data_ = pool->allocate(capacity_);
  if (data_ != nullptr) {
    pool_ = std::move(pool);
    return;
  }
  void* p = cache().take(capacity_);
  if (p == nullptr && posix_memalign(&p, kDirectAlignment, capacity_) != 0) throw std::bad_alloc();
  data_ = static_cast<std::uint8_t*>(p);
}

AlignedBuffer::~AlignedBuffer() {
  if (pool_) {
    pool_->release(data_, capacity_);
    return;
  }
  if (!cache().keep(data_, capacity_)) std::free(data_);
}

void AlignedBuffer::set_size(std::size_t size) {
  if (size > size_) throw std::length_error("AlignedBuffer::set_size cannot grow a buffer");
  size_ = size;
}

}  // namespace pykvstore
