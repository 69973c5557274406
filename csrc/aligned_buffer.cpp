#include "pykvstore/aligned_buffer.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>

namespace pykvstore {

AlignedBuffer::AlignedBuffer(std::size_t size)
    : size_(size), capacity_(round_up(size == 0 ? 1 : size, kDirectAlignment)) {
  void* p = nullptr;
  if (posix_memalign(&p, kDirectAlignment, capacity_) != 0) throw std::bad_alloc();
  data_ = static_cast<std::uint8_t*>(p);
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

void AlignedBuffer::set_size(std::size_t size) {
  if (size > size_) throw std::length_error("AlignedBuffer::set_size cannot grow a buffer");
  size_ = size;
}

}  // namespace pykvstore
