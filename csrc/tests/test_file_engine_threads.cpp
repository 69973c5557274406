// The file engine from several submitting threads at once, reads and writes
// interleaved over a shared host pool and the buffer cache, with injected
// faults: the threaded paths the TSan build checks. Also correct without it:
// every file read back equals what was written, and the pool ends whole.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/file_engine.hpp"
#include "pykvstore/host_pool.hpp"

using namespace pykvstore;

int main() {
  char dir_template[] = "/tmp/pykvstore-cpptest-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  CHECK(dir != nullptr);
  if (dir == nullptr) return pykvstore_test::finish("test_file_engine_threads");
  auto pool = std::make_shared<HostPool>(4u << 20, false, false);
  std::atomic<int> failed_writes{0};
  {
    FileEngine engine(3);
    engine.set_pool(pool);
    engine.inject_faults(true, 7, ENOSPC);  // every 7th write fails half way
    std::vector<std::thread> submitters;
    for (int t = 0; t < 4; ++t)
      submitters.emplace_back([&, t] {
        for (int i = 0; i < 25; ++i) {
          const std::size_t size = 1 + (t * 977 + i * 4099) % 70000;
          auto buf = std::make_shared<AlignedBuffer>(size, pool);
          for (std::size_t k = 0; k < size; ++k) buf->data()[k] = static_cast<std::uint8_t>(k * 31 + t + i);
          const std::string name = std::string(dir) + "/f" + std::to_string(t) + "_" + std::to_string(i);
          auto w = engine.write(name, name + ".tmp", buf, size, DirectMode::Off, false);
          try {
            CHECK_EQ(w.get(), size);
          } catch (const std::exception&) {
            ++failed_writes;
            continue;
          }
          ReadResult r = engine.read(name, DirectMode::Off, 1 << 20, false).get();
          CHECK_EQ(r.buffer->size(), size);
          CHECK(std::memcmp(r.buffer->data(), buf->data(), size) == 0);
          ::unlink(name.c_str());
        }
      });
    for (auto& s : submitters) s.join();
    CHECK_EQ(engine.counters().injected_faults.load(), static_cast<std::uint64_t>(failed_writes.load()));
  }
  CHECK(failed_writes.load() > 0);
  CHECK_EQ(pool->stats().free_bytes, pool->stats().capacity);  // every buffer came back
  CHECK_EQ(pool->stats().largest_free, pool->stats().capacity);
  ::rmdir(dir);
  return pykvstore_test::finish("test_file_engine_threads");
}
