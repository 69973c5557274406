#include "pykvstore/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pykvstore/error.hpp"

namespace pykvstore {

MappedFile::MappedFile(const std::string& path, std::size_t max_size, bool populate) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) PYKVSTORE_THROW_ERRNO("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    PYKVSTORE_THROW_IO(e, "fstat", path);
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > max_size) {
    ::close(fd);
    PYKVSTORE_THROW_IO(EFBIG, "mmap (file larger than expected)", path);
  }
  if (size_ > 0) {
    int flags = MAP_PRIVATE | (populate ? MAP_POPULATE : 0);
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      PYKVSTORE_THROW_IO(e, "mmap", path);
    }
    data_ = static_cast<std::uint8_t*>(p);
    ::madvise(p, size_, MADV_WILLNEED);  // the whole file is read next: start readahead now
  }
  ::close(fd);  // the mapping keeps the file referenced
}

MappedFile::~MappedFile() { close(); }

void MappedFile::close() noexcept {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace pykvstore
