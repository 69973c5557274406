#include "pykvstore/file_engine.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "pykvstore/checksum.hpp"
#include "pykvstore/error.hpp"
#include "pykvstore/sigbus_guard.hpp"

namespace pykvstore {
namespace {

// Closes a descriptor on every path out of a scope.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const noexcept { return fd_; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // close() reports deferred write errors (NFS, quota): check it on writes.
  int release_and_close() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd >= 0 ? ::close(fd) : 0;
  }

 private:
  int fd_ = -1;
};

bool is_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % kDirectAlignment == 0;
}

std::string parent_dir(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

// Writes len bytes at offset 0; returns 0 or the errno of the failure.
int pwrite_all(int fd, const std::uint8_t* data, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd, data + done, len - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

// Reads up to len bytes from offset 0; returns bytes read, or -errno.
ssize_t pread_all(int fd, std::uint8_t* data, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, data + done, len - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;  // end of file
    done += static_cast<std::size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// Where the payload of a safetensors image starts: after the 8-byte length
// prefix (little-endian, as safetensors writes it) and the header. False when
// the prefix is impossible.
bool payload_offset_of(const std::uint8_t* data, std::size_t size, std::size_t* offset) {
  if (size < 8) return false;
  std::uint64_t header_len;
  std::memcpy(&header_len, data, 8);
  if (header_len > size - 8) return false;
  *offset = 8 + static_cast<std::size_t>(header_len);
  return true;
}

// The checksum (XXH3-64) of a safetensors payload; false when the length prefix is impossible.
bool hash_payload_of(const std::uint8_t* data, std::size_t size, std::uint64_t* out) {
  std::size_t offset;
  if (!payload_offset_of(data, size, &offset)) return false;
  *out = xxh3_64(data + offset, size - offset);
  return true;
}

// Asks for each run of missing pages in slices of at most slice_pages; returns the pages asked for.
std::size_t will_need(int fd, const std::vector<unsigned char>& resident, std::size_t slice_pages, std::size_t page) {
  std::size_t asked = 0;
  for (std::size_t i = 0; i < resident.size();) {
    if (resident[i] & 1) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < resident.size() && !(resident[j] & 1) && j - i < slice_pages) ++j;
    ::posix_fadvise(fd, static_cast<off_t>(i * page), static_cast<off_t>((j - i) * page), POSIX_FADV_WILLNEED);
    asked += j - i;
    i = j;
  }
  return asked;
}

// A queue setting of a block device in KiB, from sysfs (a partition's queue is its disk's); 0 when unknown.
std::size_t queue_kb(unsigned major, unsigned minor, const char* name) {
  for (const char* fmt : {"/sys/dev/block/%u:%u/queue/%s", "/sys/dev/block/%u:%u/../queue/%s"}) {
    char path[128];
    std::snprintf(path, sizeof path, fmt, major, minor, name);
    if (FILE* f = std::fopen(path, "re")) {
      unsigned long kb = 0;
      int n = std::fscanf(f, "%lu", &kb);
      std::fclose(f);
      if (n == 1) return kb;
    }
  }
  return 0;
}

// The most one WILLNEED call reads on a file's device: the kernel trims a call
// to max(read_ahead_kb, max_sectors_kb) of its queue. 128 KiB (the kernel's
// default window) where sysfs does not say (no block device behind the file).
std::size_t readahead_window(dev_t dev) {
  static std::mutex mutex;
  static std::unordered_map<dev_t, std::size_t> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(dev);
  if (it != known.end()) return it->second;
  std::size_t kb = 0;
  if (major(dev) != 0) kb = std::max(queue_kb(major(dev), minor(dev), "read_ahead_kb"),
                                     queue_kb(major(dev), minor(dev), "max_sectors_kb"));
  std::size_t bytes = kb > 0 ? std::min<std::size_t>(kb << 10, 16u << 20) : (128u << 10);
  known.emplace(dev, bytes);
  return bytes;
}

// Which pages of a chunk file the page cache holds (mincore over a mapping that
// is never touched); false when it is no such file, is larger than max_size (a
// sparse 1 TiB file would cost 256 MiB of flags here; the read refuses it) or the
// kernel will not say. Opened as reads open it: no link followed, regular files only.
bool resident_pages(const std::string& path, std::size_t max_size, struct stat* st,
                    std::vector<unsigned char>& resident, Fd& fd) {
  try {
    fd.reset(open_regular_file(path));
  } catch (...) {
    return false;
  }
  if (::fstat(fd.get(), st) != 0 || !S_ISREG(st->st_mode) || st->st_size <= 0) return false;
  const auto size = static_cast<std::size_t>(st->st_size);
  if (size > max_size) return false;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return false;
  try {
    resident.resize((size + page - 1) / page);
  } catch (...) {
    ::munmap(map, size);
    return false;
  }
  int rc = ::mincore(map, size, resident.data());
  ::munmap(map, size);
  return rc == 0;
}

}  // namespace

bool FileEngine::is_cold(const std::string& path, std::size_t max_size) noexcept {
  Fd fd;
  struct stat st;
  std::vector<unsigned char> resident;
  if (!resident_pages(path, max_size, &st, resident, fd)) return false;
  std::size_t held = 0;
  for (unsigned char r : resident) held += r & 1;
  return 2 * held < resident.size();
}

bool FileEngine::readahead(const std::string& path, std::size_t max_size) noexcept {
  if (!readahead_on_.load(std::memory_order_relaxed)) return false;
  Fd fd;
  struct stat st;
  std::vector<unsigned char> resident;
  if (!resident_pages(path, max_size, &st, resident, fd)) return false;
  const auto size = static_cast<std::size_t>(st.st_size);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::size_t slice = 0;
  try {
    slice = std::max(readahead_window(st.st_dev), page) / page;
  } catch (...) {  // no memory for the cache entry: the kernel's own readahead does it
    return false;
  }
  std::size_t missing = will_need(fd.get(), resident, slice, page);
  if (missing == 0) return false;
  counters_.cold_reads.fetch_add(1, std::memory_order_relaxed);
  counters_.readahead_bytes.fetch_add(std::min(missing * page, size), std::memory_order_relaxed);
  return true;
}

int FileEngine::Fault::next() {
  std::uint64_t n = every.load(std::memory_order_relaxed);
  if (n == 0) return 0;
  return (seen.fetch_add(1, std::memory_order_relaxed) + 1) % n == 0 ? err.load(std::memory_order_relaxed) : 0;
}

void FileEngine::inject_faults(bool writes, std::uint64_t every, int err) {
  inject_faults_into(writes ? write_fault_ : read_fault_, every, err);
}

void FileEngine::inject_faults_into(Fault& f, std::uint64_t every, int err) {
  f.err.store(err);
  f.seen.store(0);
  f.every.store(every);
}

void FileEngine::inject_truncation(std::uint64_t every) { inject_faults_into(truncate_fault_, every, EIO); }

void FileEngine::inject_direct_refusal(std::uint64_t every) {
  inject_faults_into(refuse_direct_, every, EINVAL);
}

void FileEngine::set_pool(std::shared_ptr<HostPool> pool) {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  buffer_pool_ = std::move(pool);
}

FileEngine::FileEngine(std::size_t num_threads) : pool_(num_threads) {}

std::size_t FileEngine::write_now(const std::string& final_path, const std::string& tmp_path,
                                  const AlignedBuffer& buf, std::size_t size, DirectMode mode,
                                  bool sync) {
  if (size > buf.size()) PYKVSTORE_THROW_IO(EINVAL, "write (size beyond buffer)", tmp_path);
  const int base_flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  Fd fd;
  bool direct = false;
  if (mode != DirectMode::Off && is_aligned(buf.data())) {
    int d = ::open(tmp_path.c_str(), base_flags | O_DIRECT, 0644);
    if (d >= 0) {
      fd.reset(d);
      direct = true;
    } else if (errno != EINVAL || mode == DirectMode::On) {
      PYKVSTORE_THROW_ERRNO("open(O_DIRECT)", tmp_path);
    }
  } else if (mode == DirectMode::On) {
    PYKVSTORE_THROW_IO(EINVAL, "open(O_DIRECT) with an unaligned buffer", tmp_path);
  }
  auto fail = [&](int err, const char* op) {
    fd.reset();
    ::unlink(tmp_path.c_str());
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(err, op, tmp_path);
  };

  int err = 0;
  if (direct) {
    // O_DIRECT wants whole aligned blocks: write the padded length, trim after.
    err = pwrite_all(fd.get(), buf.direct_io_data(size), round_up(size, kDirectAlignment));
    if (err == EINVAL && mode == DirectMode::Auto) {
      // Some file systems accept the flag at open and refuse the write.
      fd.reset();
      ::unlink(tmp_path.c_str());
      direct = false;
    } else if (err != 0) {
      fail(err, "pwrite(O_DIRECT)");
    } else if (round_up(size, kDirectAlignment) != size && ::ftruncate(fd.get(), size) != 0) {
      fail(errno, "ftruncate");
    }
  }
  if (!direct) {
    if (fd.get() < 0) {
      if (mode != DirectMode::Off) counters_.direct_fallbacks.fetch_add(1, std::memory_order_relaxed);
      int b = ::open(tmp_path.c_str(), base_flags, 0644);
      if (b < 0) {
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
        PYKVSTORE_THROW_ERRNO("open", tmp_path);
      }
      fd.reset(b);
    }
    err = pwrite_all(fd.get(), buf.data(), size);
    if (err != 0) fail(err, "pwrite");
  }
  if (int injected = write_fault_.next()) {
    counters_.injected_faults.fetch_add(1, std::memory_order_relaxed);
    (void)::ftruncate(fd.get(), static_cast<off_t>(size / 2));  // a torn write, as a crash or EIO leaves
    fail(injected, "pwrite (injected fault)");
  }
  if (sync && ::fsync(fd.get()) != 0) fail(errno, "fsync");
  if (fd.release_and_close() != 0) {
    int e = errno;
    ::unlink(tmp_path.c_str());
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(e, "close", tmp_path);
  }
  if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_path.c_str());
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(e, "rename", final_path);
  }
  if (sync) {
    // The rename is durable only once the directory entry is.
    std::string dir = parent_dir(final_path);
    Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd.get() >= 0) ::fsync(dfd.get());
  }
  (direct ? counters_.direct_writes : counters_.buffered_writes)
      .fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_written.fetch_add(size, std::memory_order_relaxed);
  return size;
}

ReadResult FileEngine::read_now(const std::string& path, DirectMode mode, std::size_t max_size,
                               bool hash_payload) {
  Fd fd;
  bool direct = false;
  bool refused = false;  // EINVAL from the O_DIRECT open: a refusal, or no regular file there (a FIFO)
  // Regular files only, never through a final symbolic link, never blocking on a FIFO.
  if (mode != DirectMode::Off) {
    try {
      fd.reset(open_regular_file(path, O_DIRECT));
      direct = true;
    } catch (const IoError& e) {
      if (e.error_number() != EINVAL || mode == DirectMode::On) {
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
        throw;
      }
      refused = true;
    }
  }
  if (!direct) {
    try {
      fd.reset(open_regular_file(path));
    } catch (const IoError&) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      throw;
    }
    // A fallback only once the plain open shows a regular file: a FIFO or directory is no refusal.
    if (refused) counters_.direct_fallbacks.fetch_add(1, std::memory_order_relaxed);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_ERRNO("fstat", path);
  }
  auto size = static_cast<std::size_t>(st.st_size);
  if (size > max_size) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(EFBIG, "read (file larger than expected)", path);
  }
  if (int injected = read_fault_.next()) {
    counters_.injected_faults.fetch_add(1, std::memory_order_relaxed);
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(injected, "pread (injected fault)", path);
  }
  std::shared_ptr<HostPool> pool;
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    pool = buffer_pool_;
  }
  auto buf = std::make_shared<AlignedBuffer>(size, std::move(pool));
  std::size_t want = direct ? buf->capacity() : size;
  // An O_DIRECT read the file system refuses (EINVAL) is injected here for the tests of the fallback.
  ssize_t got = direct && refuse_direct_.next() != 0 ? -EINVAL : pread_all(fd.get(), buf->data(), want);
  if (got < 0 && direct && -got == EINVAL && mode == DirectMode::Auto) {
    counters_.direct_fallbacks.fetch_add(1, std::memory_order_relaxed);
    direct = false;
    // The retry reads through the page cache: O_DIRECT is cleared on this descriptor (the file
    // already checked, no second open), else it would refuse the unpadded length the same way.
    int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags == -1 || ::fcntl(fd.get(), F_SETFL, flags & ~O_DIRECT) != 0) {
      got = -errno;
    } else {
      got = pread_all(fd.get(), buf->data(), size);
    }
  }
  if (got < 0) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(static_cast<int>(-got), direct ? "pread(O_DIRECT)" : "pread", path);
  }
  // A file that shrank under us is returned short; the caller's checks see it.
  if (static_cast<std::size_t>(got) < size) buf->set_size(static_cast<std::size_t>(got));
  (direct ? counters_.direct_reads : counters_.buffered_reads)
      .fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_read.fetch_add(buf->size(), std::memory_order_relaxed);
  ReadResult result{buf, 0, false};
  if (hash_payload) result.has_hash = hash_payload_of(buf->data(), buf->size(), &result.payload_hash);
  return result;
}

std::shared_ptr<MappedFile> FileEngine::map_file(const std::string& path, std::size_t max_size) {
  if (int injected = read_fault_.next()) {
    counters_.injected_faults.fetch_add(1, std::memory_order_relaxed);
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(injected, "mmap (injected fault)", path);
  }
  std::shared_ptr<MappedFile> file;
  try {
    file = std::make_shared<MappedFile>(path, max_size, false);
  } catch (const IoError&) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    throw;
  }
  if (truncate_fault_.next() != 0) {  // another process cutting the file short in place, now it is mapped
    counters_.injected_faults.fetch_add(1, std::memory_order_relaxed);
    (void)::truncate(path.c_str(), static_cast<off_t>(file->size() / 2));
  }
  counters_.mapped_reads.fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_read.fetch_add(file->size(), std::memory_order_relaxed);
  return file;
}

namespace {

// The longest header prefix a MapResult copies out: 8 bytes of length plus
// chunk_file.MAX_HEADER (1 MiB); a longer header is garbage the decoder refuses.
constexpr std::size_t kMaxHeaderCopy = 8 + (std::size_t{1} << 20);

// One pass over a mapped chunk on an I/O thread, run under the SIGBUS guard:
// plain data only (a fault leaves the pass's frame without unwinding it).
struct MappedPass {
  const std::uint8_t* data;
  std::size_t size;
  const PagedLayout* layout;  // null: hash only
  const std::int64_t* block_ids;
  std::size_t num_blocks;
  std::int64_t skip;
  std::size_t payload_bytes;
  bool hash_payload;
  std::uint8_t* header;  // where the header's bytes go (header_size of them)
  std::size_t header_size;
  std::uint64_t header_len;  // out: the length prefix (when size >= 8)
  std::uint64_t hash;
  bool has_hash;
  bool scattered;
};

void read_length_prefix(void* arg) {
  auto* m = static_cast<MappedPass*>(arg);
  std::memcpy(&m->header_len, m->data, 8);
}

void copy_header_hash_scatter(void* arg) {
  auto* m = static_cast<MappedPass*>(arg);
  std::memcpy(m->header, m->data, m->header_size);
  std::size_t offset;
  if (m->layout != nullptr && payload_offset_of(m->data, m->size, &offset) && m->size - offset == m->payload_bytes) {
    m->hash = scatter_verified(*m->layout, m->block_ids, m->num_blocks, m->data + offset, m->skip);
    m->has_hash = m->scattered = true;
  } else if (m->hash_payload || m->layout != nullptr) {
    // no payload, or another shape: hash only (the caller finds it unsound), never copy it
    m->has_hash = hash_payload_of(m->data, m->size, &m->hash);
  }
}

}  // namespace

MapResult FileEngine::map_pass(const std::string& path, std::size_t max_size, const PagedLayout* layout,
                               const std::int64_t* block_ids, std::size_t num_blocks, std::int64_t skip,
                               std::size_t payload_bytes, bool hash_payload) {
  MapResult result;
  result.file = map_file(path, max_size);
  MappedPass m{};
  m.data = result.file->data();
  m.size = result.file->size();
  m.layout = layout;
  m.block_ids = block_ids;
  m.num_blocks = num_blocks;
  m.skip = skip;
  m.payload_bytes = payload_bytes;
  m.hash_payload = hash_payload;
  // Every touch of the mapping is guarded: a file truncated in place meanwhile
  // faults (SIGBUS) past its new end, which fails this read instead of the process.
  auto fault = [&] {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    counters_.sigbus_faults.fetch_add(1, std::memory_order_relaxed);
    PYKVSTORE_THROW_IO(EIO, "read of a mapped file (it shrank while mapped: SIGBUS)", path);
  };
  std::size_t header_size = m.size;
  if (m.size >= 8) {
    if (!run_guarded(m.data, m.size, read_length_prefix, &m)) fault();
    if (m.header_len <= kMaxHeaderCopy - 8) header_size = std::min<std::size_t>(m.size, 8 + m.header_len);
    else header_size = 8;  // impossible: the decoder refuses the length prefix alone
  }
  result.header.resize(header_size);
  m.header = reinterpret_cast<std::uint8_t*>(result.header.data());
  m.header_size = header_size;
  // An empty file is not mapped at all (data is null): nothing to copy or hash.
  if (m.size > 0 && !run_guarded(m.data, m.size, copy_header_hash_scatter, &m)) fault();
  result.payload_hash = m.hash;
  result.has_hash = m.has_hash;
  result.scattered = m.scattered;
  if (m.scattered) counters_.copied_while_verifying.fetch_add(1, std::memory_order_relaxed);
  return result;
}

MapResult FileEngine::map_now(const std::string& path, std::size_t max_size, bool hash_payload) {
  return map_pass(path, max_size, nullptr, nullptr, 0, 0, 0, hash_payload);
}

MapResult FileEngine::map_scatter_now(const std::string& path, std::size_t max_size, const PagedLayout& layout,
                                      const std::vector<std::int64_t>& block_ids, std::int64_t skip,
                                      std::size_t payload_bytes) {
  return map_pass(path, max_size, &layout, block_ids.data(), block_ids.size(), skip, payload_bytes, true);
}

void copy_mapped(const MapResult& result, std::size_t offset, void* dst, std::size_t n) {
  const MappedFile* f = result.file.get();
  const std::string path = f != nullptr ? f->path() : std::string("(no mapping)");
  if (f == nullptr || offset > f->size() || n > f->size() - offset)
    PYKVSTORE_THROW_IO(EINVAL, "copy from a mapped file (range beyond the file)", path);
  if (n > 0 && !guarded_copy(dst, f->data() + offset, n, f->data(), f->size()))
    PYKVSTORE_THROW_IO(EIO, "copy from a mapped file (it shrank while mapped: SIGBUS)", path);
}

std::shared_future<MapResult> FileEngine::map(std::string path, std::size_t max_size, bool hash_payload) {
  readahead(path, max_size);
  return pool_.submit([this, path = std::move(path), max_size, hash_payload] {
    return map_now(path, max_size, hash_payload);
  });
}

std::shared_future<MapResult> FileEngine::map_scatter(std::string path, std::size_t max_size, PagedLayout layout,
                                                      std::vector<std::int64_t> block_ids, std::int64_t skip,
                                                      std::size_t payload_bytes) {
  readahead(path, max_size);
  return pool_.submit([this, path = std::move(path), max_size, layout = std::move(layout),
                       block_ids = std::move(block_ids), skip, payload_bytes] {
    return map_scatter_now(path, max_size, layout, block_ids, skip, payload_bytes);
  });
}

std::shared_future<std::size_t> FileEngine::write(std::string final_path, std::string tmp_path,
                                                  BufferPtr buf, std::size_t size,
                                                  DirectMode mode, bool sync) {
  return pool_.submit([this, final_path = std::move(final_path), tmp_path = std::move(tmp_path),
                       buf = std::move(buf), size, mode, sync] {
    return write_now(final_path, tmp_path, *buf, size, mode, sync);
  });
}

std::shared_future<ReadResult> FileEngine::read(std::string path, DirectMode mode,
                                                std::size_t max_size, bool hash_payload) {
  if (mode == DirectMode::Off) readahead(path, max_size);  // O_DIRECT reads skip the page cache and queue deep already
  return pool_.submit([this, path = std::move(path), mode, max_size, hash_payload] {
    return read_now(path, mode, max_size, hash_payload);
  });
}

}  // namespace pykvstore
