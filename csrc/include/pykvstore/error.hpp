// Errors raised by the native core. Pure C++: the binding layer maps IoError
// to Python's OSError (errno, message, filename).
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pykvstore {

// An I/O failure that names the operation and the file it touched.
class IoError : public std::runtime_error {
 public:
  IoError(int err, const std::string& op, const std::string& path)
      : std::runtime_error(op + " failed for " + path + ": " + std::strerror(err)),
        errno_(err),
        op_(op),
        path_(path) {}
  int error_number() const noexcept { return errno_; }
  const std::string& op() const noexcept { return op_; }
  const std::string& path() const noexcept { return path_; }

 private:
  int errno_;
  std::string op_;
  std::string path_;
};

}  // namespace pykvstore

// The one way native code reports a failed system call: capture errno at once.
#define PYKVSTORE_THROW_ERRNO(op, path) throw ::pykvstore::IoError(errno, (op), (path))
#define PYKVSTORE_THROW_IO(err, op, path) throw ::pykvstore::IoError((err), (op), (path))
