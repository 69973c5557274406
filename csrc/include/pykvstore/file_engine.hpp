// The file I/O engine: chunk files written and read by a pool of threads with
// pwrite/pread. Writes are crash-safe (temporary name, fsync, rename, fsync of
// the directory); O_DIRECT is used where the file system takes it, and
// counters say which path each operation ran.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/block_copy.hpp"
#include "pykvstore/host_pool.hpp"
#include "pykvstore/mapped_file.hpp"
#include "pykvstore/thread_pool.hpp"

namespace pykvstore {

// OFF: page cache only. AUTO: O_DIRECT where the file system accepts it,
// buffered otherwise (counted as a fallback). ON: O_DIRECT or an error.
enum class DirectMode : int { Off = 0, Auto = 1, On = 2 };

struct IoCounters {
  std::atomic<std::uint64_t> direct_writes{0};
  std::atomic<std::uint64_t> buffered_writes{0};
  std::atomic<std::uint64_t> direct_reads{0};
  std::atomic<std::uint64_t> buffered_reads{0};
  std::atomic<std::uint64_t> direct_fallbacks{0};
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::uint64_t> bytes_read{0};
  std::atomic<std::uint64_t> mapped_reads{0};
  std::atomic<std::uint64_t> copied_while_verifying{0};  // map_scatter loads that copied on the I/O thread
  std::atomic<std::uint64_t> cold_reads{0};       // files asked for while not wholly in the page cache
  std::atomic<std::uint64_t> readahead_bytes{0};  // bytes of theirs the readahead asked the disk for
  std::atomic<std::uint64_t> injected_faults{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> sigbus_faults{0};  // mapped reads failed by a file truncated under them
};

using BufferPtr = std::shared_ptr<AlignedBuffer>;

// A whole file in aligned memory. When asked, the reading thread also hashes
// (XXH3-64) the payload of a safetensors file: the bytes after its 8-byte
// length prefix and header. has_hash is false when the prefix is impossible.
struct ReadResult {
  BufferPtr buffer;
  std::uint64_t payload_hash = 0;
  bool has_hash = false;
};

// A whole file mapped, hashed the same way on the I/O thread (which also
// brings its pages into memory before the caller copies from them). The
// mapping is only ever read under the SIGBUS guard (sigbus_guard.hpp): the I/O
// thread copies the header out (`header`) and callers copy the rest with
// copy_mapped, so a file truncated in place fails a read, never the process.
struct MapResult {
  std::shared_ptr<MappedFile> file;
  std::string header;  // the file's first bytes: its length prefix and header (at most 8 + 1 MiB)
  std::uint64_t payload_hash = 0;
  bool has_hash = false;
  bool scattered = false;  // map_scatter copied the payload into the engine's blocks
};

// Copies n bytes at offset of a mapped result's file into dst, under the
// SIGBUS guard; IoError EIO when the file shrank under the mapping, EINVAL
// when the range is beyond the file.
void copy_mapped(const MapResult& result, std::size_t offset, void* dst, std::size_t n);

class FileEngine {
 public:
  explicit FileEngine(std::size_t num_threads);

  // Writes buf[0, size) to tmp_path, syncs it, renames it to final_path.
  // The result is the number of bytes written.
  std::shared_future<std::size_t> write(std::string final_path, std::string tmp_path,
                                        BufferPtr buf, std::size_t size, DirectMode mode,
                                        bool sync);
  // Reads a whole file (at most max_size bytes, else an EFBIG error).
  std::shared_future<ReadResult> read(std::string path, DirectMode mode, std::size_t max_size,
                                      bool hash_payload);

  std::shared_future<MapResult> map(std::string path, std::size_t max_size, bool hash_payload);
  // Maps a chunk file and, when its payload is exactly payload_bytes long,
  // scatters it into the engine's blocks on the I/O thread while hashing it
  // (scatter_verified): the load's copy and its verification read the bytes
  // once, on the I/O threads' cores. Otherwise it only hashes (scattered is
  // false). The layout's memory must outlive the future.
  std::shared_future<MapResult> map_scatter(std::string path, std::size_t max_size, PagedLayout layout,
                                            std::vector<std::int64_t> block_ids, std::int64_t skip,
                                            std::size_t payload_bytes);

  // Asks the kernel to start reading the pages of `path` the page cache lacks
  // (posix_fadvise WILLNEED over every missing run) and returns at once; true
  // when some were missing (a cold file, counted in cold_reads). map, map_scatter
  // and buffered reads call it on the submitting thread, so every file a load has
  // in flight is on its way from the disk while the I/O threads verify the
  // earlier ones: the queue is as deep as the files in flight, not one
  // readahead window per I/O thread. Never throws: a file it cannot look at is
  // left to the read that follows, which reports it.
  // Files larger than max_size, links and non-regular files are not looked at.
  bool readahead(const std::string& path, std::size_t max_size = SIZE_MAX) noexcept;
  // True when most of a file's pages are not in the page cache (a cold file):
  // the disk tier then reads it with O_DIRECT, which spends no CPU filling the
  // page cache. False for a file it cannot look at.
  bool is_cold(const std::string& path, std::size_t max_size = SIZE_MAX) noexcept;
  // Off by default (the disk tier sets it from defaults' readahead): on the
  // 2-core VM it was measured on, reading cold files with O_DIRECT beat the page
  // cache with or without it; it is for cold_read=cache on devices whose own
  // readahead window is small.
  void set_readahead(bool on) noexcept { readahead_on_.store(on, std::memory_order_relaxed); }
  bool readahead_enabled() const noexcept { return readahead_on_.load(std::memory_order_relaxed); }

  // Read buffers come from this pool when it has room (the heap otherwise).
  void set_pool(std::shared_ptr<HostPool> pool);
  // Fault injection for tests of the error paths: from now on every `every`-th
  // write (after half its bytes reach the temporary file) or read fails with
  // errno `err`. every = 0 turns it off.
  void inject_faults(bool writes, std::uint64_t every, int err);
  // Every `every`-th O_DIRECT read is refused with EINVAL, as a file system may (0 turns it off).
  void inject_direct_refusal(std::uint64_t every);
  // From now on every `every`-th mapping (map, map_scatter) has its file cut to
  // half its size right after it is mapped, as another process truncating it in
  // place would: the guarded pass over it then faults (SIGBUS) and fails with EIO.
  void inject_truncation(std::uint64_t every);

  // The same operations on the calling thread.
  std::size_t write_now(const std::string& final_path, const std::string& tmp_path,
                        const AlignedBuffer& buf, std::size_t size, DirectMode mode, bool sync);
  ReadResult read_now(const std::string& path, DirectMode mode, std::size_t max_size,
                      bool hash_payload);
  MapResult map_now(const std::string& path, std::size_t max_size, bool hash_payload);
  MapResult map_scatter_now(const std::string& path, std::size_t max_size, const PagedLayout& layout,
                            const std::vector<std::int64_t>& block_ids, std::int64_t skip,
                            std::size_t payload_bytes);

  const IoCounters& counters() const noexcept { return counters_; }
  std::size_t num_threads() const noexcept { return pool_.size(); }

 private:
  struct Fault {
    std::atomic<std::uint64_t> every{0};
    std::atomic<int> err{0};
    std::atomic<std::uint64_t> seen{0};
    // errno to fail this operation with, or 0
    int next();
  };
  static void inject_faults_into(Fault& f, std::uint64_t every, int err);
  // Maps a whole file on the calling thread, counted (and failed when a fault is injected).
  std::shared_ptr<MappedFile> map_file(const std::string& path, std::size_t max_size);
  // map_now and map_scatter_now: maps, then copies the header out and hashes
  // (scattering when layout is set) under the SIGBUS guard; IoError EIO on a fault.
  MapResult map_pass(const std::string& path, std::size_t max_size, const PagedLayout* layout,
                     const std::int64_t* block_ids, std::size_t num_blocks, std::int64_t skip,
                     std::size_t payload_bytes, bool hash_payload);

  IoCounters counters_;
  Fault write_fault_, read_fault_, truncate_fault_, refuse_direct_;
  std::atomic<bool> readahead_on_{false};
  std::mutex pool_mutex_;
  std::shared_ptr<HostPool> buffer_pool_;
  ThreadPool pool_;  // last: joined before the counters go away
};

}  // namespace pykvstore
