#include "pykvstore/mapped_file.hpp"

#include <cerrno>
#include <cstdio>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pykvstore/error.hpp"

namespace pykvstore {

int open_regular_file(const std::string& path, int extra_flags) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | extra_flags);
  if (fd < 0) {
    if (errno == ELOOP) PYKVSTORE_THROW_IO(ELOOP, "open (a symbolic link: links are not followed in a bucket)", path);
    PYKVSTORE_THROW_ERRNO("open", path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    PYKVSTORE_THROW_IO(e, "fstat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    PYKVSTORE_THROW_IO(EINVAL, "open (not a regular file)", path);
  }
  // An absolute path must be the file's own: a directory link on the way shows
  // as another path here (checked on the file opened, so no window for a swap).
  if (!path.empty() && path[0] == '/') {
    char proc[48];
    std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    std::string real(path.size() + 16, '\0');
    ssize_t n = ::readlink(proc, real.data(), real.size());
    if (n >= 0) {  // no /proc: O_NOFOLLOW and fstat still hold
      real.resize(static_cast<std::size_t>(n));
      if (real != path) {
        ::close(fd);
        if (real.size() == path.size() + 10 && real.compare(path.size(), 10, " (deleted)") == 0)
          PYKVSTORE_THROW_IO(ENOENT, "open (removed meanwhile)", path);
        PYKVSTORE_THROW_IO(ELOOP, "open (reached through a symbolic link: links are not followed in a bucket)", path);
      }
    }
  }
  return fd;
}

MappedFile::MappedFile(const std::string& path, std::size_t max_size, bool populate) : path_(path) {
  int fd = open_regular_file(path);
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
