// A chunk file mapped read-only into memory. A load whose destination is host
// memory copies from the mapping (the page cache) straight into the engine's
// blocks: no read buffer, no extra copy. Chunk files are never modified after
// their rename, and an unlinked file stays readable while mapped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pykvstore {

// Opens a chunk file for reading the one way every reader does: never through a
// symbolic link in its last component (O_NOFOLLOW: a link is an error, ELOOP),
// never blocking on a FIFO or device (O_NONBLOCK), and only a regular file
// (fstat, else EINVAL "not a regular file"). Extra flags (O_DIRECT) are added.
// Returns the descriptor; throws IoError on any failure.
int open_regular_file(const std::string& path, int extra_flags = 0);

class MappedFile {
 public:
  // Maps the whole file (at most max_size bytes, else an EFBIG error).
  // populate: fault every page in now (one system call instead of one fault per page).
  MappedFile(const std::string& path, std::size_t max_size, bool populate);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The mapping is private and writable so that callers may view it as an
  // ordinary tensor; a write would only touch this process's copy of a page.
  std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  const std::string& path() const noexcept { return path_; }
  void close() noexcept;  // unmaps now; data() is null afterwards

 private:
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

}  // namespace pykvstore
