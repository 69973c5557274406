// The only file that knows Python: builds pykvstore._C from the C++ core.
// Raw objects only (buffers, futures, counters); pykvstore/ owns the policy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <vector>

#include <cstring>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/block_copy.hpp"
#include "pykvstore/checksum.hpp"
#include "pykvstore/chunk_keys.hpp"
#include "pykvstore/copy_engine.hpp"
#include "pykvstore/cuda_runtime_info.hpp"
#include "pykvstore/error.hpp"
#include "pykvstore/file_engine.hpp"
#include "pykvstore/host_pool.hpp"
#include "pykvstore/mapped_file.hpp"

namespace py = pybind11;
using namespace pykvstore;

namespace {

// A pending write: wait() and result() release the GIL while they block.
struct WriteFuture {
  std::shared_future<std::size_t> fut;
  bool done() const { return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  std::size_t result() const { return fut.get(); }
};

struct MapFuture {
  std::shared_future<MapResult> fut;
  bool done() const { return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  MapResult result() const { return fut.get(); }
};

struct ReadFuture {
  std::shared_future<ReadResult> fut;
  bool done() const { return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  ReadResult result() const { return fut.get(); }
};

// Whether a buffer's items lie in one C-ordered block from info.ptr on: a strided
// or reversed view (ptr at its last byte) would be read or written past its end.
bool c_contiguous(const py::buffer_info& info) {
  py::ssize_t step = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != step) return false;
    step *= info.shape[d];
  }
  return true;
}

// Address and length of a contiguous buffer-protocol object, checked.
std::pair<const unsigned char*, std::size_t> span(const py::buffer& b, std::size_t offset,
                                                   std::ptrdiff_t length) {
  py::buffer_info info = b.request();
  if (!c_contiguous(info)) throw std::invalid_argument("buffer is not contiguous");
  std::size_t size = static_cast<std::size_t>(info.size * info.itemsize);
  if (offset > size) throw std::out_of_range("offset beyond the buffer");
  std::size_t n = length < 0 ? size - offset : static_cast<std::size_t>(length);
  if (n > size - offset) throw std::out_of_range("length beyond the buffer");
  return {static_cast<const unsigned char*>(info.ptr) + offset, n};
}

DirectMode to_mode(int m) {
  if (m < 0 || m > 2) throw std::invalid_argument("direct mode must be 0 (off), 1 (auto) or 2 (on)");
  return static_cast<DirectMode>(m);
}

// Token ids of a list or tuple of plain ints as little-endian uint32 bytes, or
// None when an item is anything else (not an int, a bool, out of [0, 2**32)):
// the caller's generic path then names the problem. The scheduler asks for
// lookups of long prompts every step; this reads each int once, where
// np.asarray builds an int64 array first.
py::object tokens_u32(py::handle seq) {
  PyObject* o = seq.ptr();
  if (!PyList_Check(o) && !PyTuple_Check(o)) return py::none();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
  PyObject** items = PySequence_Fast_ITEMS(o);  // the GIL is held and no Python code runs below
  py::object out = py::reinterpret_steal<py::object>(PyByteArray_FromStringAndSize(nullptr, n * 4));
  if (!out) throw py::error_already_set();
  auto* dst = reinterpret_cast<unsigned char*>(PyByteArray_AS_STRING(out.ptr()));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_CheckExact(items[i])) return py::none();
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
    if (overflow != 0 || v < 0 || v > 0xFFFFFFFFLL) return py::none();
    const auto u = static_cast<std::uint32_t>(v);
    dst[4 * i] = static_cast<unsigned char>(u);
    dst[4 * i + 1] = static_cast<unsigned char>(u >> 8);
    dst[4 * i + 2] = static_cast<unsigned char>(u >> 16);
    dst[4 * i + 3] = static_cast<unsigned char>(u >> 24);
  }
  return out;
}

// The chained XXH3-128 keys of the full chunks of `tokens` (contiguous token
// bytes) under `root`: 32-character hex str (hex) or 16-byte bytes, one per
// chunk. keys.py checks the arguments first. Keeps the GIL: a 128K-token
// prompt takes tens of microseconds, less than taking the GIL back may wait.
py::list chain_keys(const py::bytes& root, const py::object& tokens, std::size_t chunk_bytes, bool hex) {
  if (chunk_bytes == 0) throw std::invalid_argument("chunk_bytes must be positive");
  char* root_ptr = nullptr;
  Py_ssize_t root_len = 0;
  if (PyBytes_AsStringAndSize(root.ptr(), &root_ptr, &root_len) != 0) throw py::error_already_set();
  Py_buffer view;
  if (PyObject_GetBuffer(tokens.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();  // contiguous only
  const std::size_t chunks = static_cast<std::size_t>(view.len) / chunk_bytes;
  std::vector<unsigned char> digests(chunks * kChunkKeyBytes);
  chain_xxh3_128(reinterpret_cast<const unsigned char*>(root_ptr), static_cast<std::size_t>(root_len),
                 static_cast<const unsigned char*>(view.buf), chunk_bytes, chunks, digests.data());
  PyBuffer_Release(&view);
  py::list out(chunks);
  for (std::size_t i = 0; i < chunks; ++i) {
    const unsigned char* d = digests.data() + i * kChunkKeyBytes;
    PyObject* key;
    if (hex) {
      key = PyUnicode_New(2 * kChunkKeyBytes, 127);
      if (key != nullptr) to_hex(d, kChunkKeyBytes, reinterpret_cast<char*>(PyUnicode_1BYTE_DATA(key)));
    } else {
      key = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(d), kChunkKeyBytes);
    }
    if (key == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), key);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pykvstore native core: aligned buffers and the threaded file I/O engine";

  // IoError -> OSError(errno, message, filename); OSError picks the subclass
  // (FileNotFoundError, ...) from errno.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const IoError& e) {
      py::object exc = py::reinterpret_borrow<py::object>(PyExc_OSError)(
          e.error_number(), e.op() + ": " + std::strerror(e.error_number()), e.path());
      PyErr_SetObject(PyExc_OSError, exc.ptr());
    }
  });

  m.attr("DIRECT_ALIGNMENT") = kDirectAlignment;
  m.def("tokens_u32", &tokens_u32, py::arg("tokens"),
        "A list or tuple of ints in [0, 2**32) as little-endian uint32 bytes (a bytearray); None otherwise.");
  m.def("chain_keys", &chain_keys, py::arg("root"), py::arg("tokens"), py::arg("chunk_bytes"), py::arg("hex"),
        "Chained XXH3-128 keys of the full chunk_bytes-sized chunks of a contiguous buffer under root "
        "(keys.py's format): a list of hex str or of 16-byte bytes.");
  m.def("set_buffer_cache_limit", &set_buffer_cache_limit, py::arg("bytes"),
        "Bytes of freed aligned buffers kept for reuse (process-wide).");
  m.def("buffer_cache_bytes", &buffer_cache_bytes, "Bytes of freed aligned buffers held for reuse now.");
  m.attr("cuda_compiled") = cuda_compiled();
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without driver or device).");
  m.def("cuda_runtime_version", &cuda_runtime_version, "CUDA runtime version, 0 when not compiled.");

  py::class_<HostPool, std::shared_ptr<HostPool>>(m, "HostPool")
      .def(py::init<std::size_t, bool, bool>(), py::arg("capacity"), py::arg("pin") = true,
           py::arg("huge_pages") = true)
      .def_property_readonly("base", &HostPool::base)
      .def("prefault", &HostPool::prefault, py::arg("nbytes"), py::call_guard<py::gil_scoped_release>(),
           "Commits the pages of the pool's first nbytes (MADV_POPULATE_WRITE, by slices, without the GIL);\n"
           "returns the bytes done: fewer once stop_prefault() was called, 0 when pinned or the kernel lacks the flag.")
      .def("stop_prefault", &HostPool::stop_prefault,
           "A running prefault ends after its current slice; later ones do nothing (the store is closing).")
      .def("stats", [](const HostPool& p) {
        PoolStats s = p.stats();
        py::dict d;
        d["capacity"] = s.capacity;
        d["free_bytes"] = s.free_bytes;
        d["largest_free"] = s.largest_free;
        d["live_buffers"] = s.live_buffers;
        d["allocations"] = s.allocations;
        d["exhausted"] = s.exhausted;
        d["pinned"] = s.pinned;
        d["huge_pages"] = s.huge_pages;
        return d;
      });

  py::class_<AlignedBuffer, std::shared_ptr<AlignedBuffer>>(m, "AlignedBuffer", py::buffer_protocol())
      .def(py::init<std::size_t>(), py::arg("size"))
      .def(py::init<std::size_t, std::shared_ptr<HostPool>>(), py::arg("size"), py::arg("pool"))
      .def_property_readonly("from_pool", &AlignedBuffer::from_pool)
      .def_property_readonly("size", &AlignedBuffer::size)
      .def_property_readonly("capacity", &AlignedBuffer::capacity)
      .def_property_readonly("address",
                             [](const AlignedBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); })
      .def("__len__", &AlignedBuffer::size)
      .def_buffer([](AlignedBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {b.size()}, {std::size_t{1}});
      });

  // hash(buffer, offset=0, length=-1) over buffer[offset:offset+length], the GIL released.
  auto def_hash = [&m](const char* name, std::uint64_t (*hash)(const void*, std::size_t), const char* doc) {
    m.def(
        name,
        [hash](const py::buffer& b, std::size_t offset, std::ptrdiff_t length) {
          auto [p, n] = span(b, offset, length);
          py::gil_scoped_release release;
          return hash(p, n);
        },
        py::arg("buffer"), py::arg("offset") = 0, py::arg("length") = -1, doc);
  };
  def_hash(
      "xxh64", [](const void* p, std::size_t n) { return xxh64(p, n); },
      "XXH64 (seed 0) of buffer[offset:offset+length]: the checksum of chunks written before XXH3.");
  def_hash("xxh3_64", xxh3_64,
           "XXH3-64 (seed 0, default secret) of buffer[offset:offset+length]: the chunk payload checksum.");
  m.def(
      "xxh3_128",
      [](const py::buffer& b) {
        auto [p, n] = span(b, 0, -1);
        std::array<unsigned char, kChunkKeyBytes> d;
        const Hash128 h = xxh3_128(p, n);
        for (int i = 0; i < 8; ++i) {
          d[i] = static_cast<unsigned char>(h.high >> (56 - 8 * i));
          d[8 + i] = static_cast<unsigned char>(h.low >> (56 - 8 * i));
        }
        return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
      },
      py::arg("buffer"), "XXH3-128 (seed 0) of a buffer as its canonical 16-byte digest (tests check it against xxhash).");
  py::class_<Xxh3>(m, "Xxh3", "XXH3-64 fed in pieces.")
      .def(py::init<>())
      .def("update",
           [](Xxh3& h, const py::buffer& b) {
             auto [p, n] = span(b, 0, -1);
             h.update(p, n);
           })
      .def("digest", &Xxh3::digest);

  py::class_<MappedFile, std::shared_ptr<MappedFile>>(m, "MappedFile", py::buffer_protocol())
      .def(py::init<std::string, std::size_t, bool>(), py::arg("path"), py::arg("max_size"),
           py::arg("populate") = false)
      .def_property_readonly("path", &MappedFile::path)
      .def("__len__", &MappedFile::size)
      .def_buffer([](MappedFile& f) {
        return py::buffer_info(f.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1, {f.size()},
                               {std::size_t{1}});
      });
  // The mapping itself never reaches Python (a view of it would fault with
  // SIGBUS, unguarded, once the file is truncated in place): its header comes
  // as bytes the I/O thread copied, the rest through the guarded copy_to.
  py::class_<MapResult>(m, "MapResult")
      .def_property_readonly("header", [](const MapResult& r) { return py::bytes(r.header); },
                             "The file's length prefix and header, copied out of the mapping.")
      .def_property_readonly("size", [](const MapResult& r) { return r.file ? r.file->size() : 0; },
                             "The file's size when it was mapped.")
      .def(
          "copy_to",
          [](const MapResult& r, const py::buffer& dst, std::size_t offset, std::size_t n) {
            py::buffer_info info = dst.request(true);
            // One memcpy from info.ptr: only a C-contiguous destination is taken.
            if (!c_contiguous(info)) throw std::invalid_argument("destination is not a contiguous buffer");
            if (static_cast<std::size_t>(info.size * info.itemsize) < n)
              throw std::out_of_range("destination smaller than the copy");
            py::gil_scoped_release release;
            copy_mapped(r, offset, info.ptr, n);
          },
          py::arg("dst"), py::arg("offset"), py::arg("nbytes"),
          "Copies nbytes at offset of the mapped file into dst (writable) under the SIGBUS guard:\n"
          "OSError EIO when the file shrank while mapped.")
      .def_property_readonly("payload_hash", [](const MapResult& r) -> py::object {
        if (!r.has_hash) return py::none();
        return py::int_(r.payload_hash);
      })
      .def_readonly("scattered", &MapResult::scattered);

  py::class_<ReadResult>(m, "ReadResult")
      .def_readonly("buffer", &ReadResult::buffer)
      .def_property_readonly("payload_hash", [](const ReadResult& r) -> py::object {
        if (!r.has_hash) return py::none();
        return py::int_(r.payload_hash);
      });

  // Layout of a paged KV cache in canonical axis order (block, plane, token,
  // head, channel); addresses and strides come from pykvstore.layout.
  // Layout of a paged KV cache in canonical axis order (block, plane, token,
  // head, channel); addresses and strides come from pykvstore.layout.
  // plane_strides, when given, overrides each plane's (offset, token, head,
  // channel) strides within a block.
  py::class_<PagedLayout>(m, "PagedLayout")
      .def(py::init([](std::vector<std::uintptr_t> bases, std::array<std::int64_t, 5> strides,
                       std::array<std::int64_t, 4> sizes, std::size_t itemsize,
                       std::vector<std::array<std::int64_t, 4>> plane_strides) {
             PagedLayout l;
             l.layer_bases = std::move(bases);
             l.stride_block = strides[0];
             if (!plane_strides.empty() && static_cast<std::int64_t>(plane_strides.size()) != sizes[0])
               throw std::invalid_argument("plane_strides needs one entry per plane");
             for (std::int64_t p = 0; p < sizes[0]; ++p) {
               if (plane_strides.empty())
                 l.planes.push_back({p * strides[1], strides[2], strides[3], strides[4]});
               else
                 l.planes.push_back({plane_strides[p][0], plane_strides[p][1], plane_strides[p][2], plane_strides[p][3]});
             }
             l.block_size = sizes[1];
             l.heads = sizes[2];
             l.head_dim = sizes[3];
             l.itemsize = itemsize;
             return l;
           }),
           py::arg("layer_bases"), py::arg("strides"), py::arg("sizes"), py::arg("itemsize"),
           py::arg("plane_strides") = std::vector<std::array<std::int64_t, 4>>{});
  m.def(
      "gather_blocks",
      [](const PagedLayout& l, std::uintptr_t ids, std::size_t n, std::uintptr_t chunk, unsigned threads) {
        gather_blocks(l, reinterpret_cast<const std::int64_t*>(ids), n, reinterpret_cast<void*>(chunk), threads);
      },
      py::arg("layout"), py::arg("block_ids_ptr"), py::arg("num_blocks"), py::arg("chunk_ptr"),
      py::arg("max_threads") = 0,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "scatter_blocks",
      [](const PagedLayout& l, std::uintptr_t ids, std::size_t n, std::uintptr_t chunk, std::int64_t skip,
         unsigned threads) {
        scatter_blocks(l, reinterpret_cast<const std::int64_t*>(ids), n,
                       reinterpret_cast<const void*>(chunk), skip, threads);
      },
      py::arg("layout"), py::arg("block_ids_ptr"), py::arg("num_blocks"), py::arg("chunk_ptr"),
      py::arg("skip"), py::arg("max_threads") = 0, py::call_guard<py::gil_scoped_release>());

  m.def(
      "block_runs",
      [](const PagedLayout& l, std::uintptr_t ids, std::size_t n, std::uintptr_t chunk, std::int64_t skip) {
        std::vector<CopyRun> runs = block_runs(l, reinterpret_cast<const std::int64_t*>(ids), n, chunk, skip);
        py::list out;
        for (const CopyRun& r : runs) out.append(py::make_tuple(r.engine, r.chunk, r.bytes));
        return out;
      },
      py::arg("layout"), py::arg("block_ids_ptr"), py::arg("num_blocks"), py::arg("chunk_ptr"), py::arg("skip") = 0,
      "(engine address, chunk address, bytes) of each contiguous span gather/scatter moves.");

  py::class_<CopyTicket, std::shared_ptr<CopyTicket>>(m, "CopyTicket")
      .def("done", &CopyTicket::done)
      .def("wait", &CopyTicket::wait, py::call_guard<py::gil_scoped_release>());
  py::class_<CopyEngine>(m, "CopyEngine")
      .def(py::init<int>(), py::arg("device"))
      .def_property_readonly("device", &CopyEngine::device)
      .def_property_readonly("stream", &CopyEngine::stream)
      .def_property_readonly("batch_api", &CopyEngine::batch_api)
      .def("copy", &CopyEngine::copy, py::arg("dsts"), py::arg("srcs"), py::arg("sizes"), py::arg("after_stream"),
           py::arg("batched") = true, py::call_guard<py::gil_scoped_release>())
      .def(
          "copy_blocks",
          [](CopyEngine& e, const PagedLayout& l, std::uintptr_t ids, std::size_t n, std::uintptr_t chunk,
             std::int64_t skip, bool to_chunk, std::uintptr_t after_stream, bool batched) {
            std::vector<CopyRun> runs = block_runs(l, reinterpret_cast<const std::int64_t*>(ids), n, chunk, skip);
            std::vector<std::uintptr_t> dsts, srcs;
            std::vector<std::size_t> sizes;
            dsts.reserve(runs.size());
            srcs.reserve(runs.size());
            sizes.reserve(runs.size());
            for (const CopyRun& r : runs) {
              dsts.push_back(to_chunk ? r.chunk : r.engine);
              srcs.push_back(to_chunk ? r.engine : r.chunk);
              sizes.push_back(r.bytes);
            }
            return e.copy(dsts, srcs, sizes, after_stream, batched);
          },
          py::arg("layout"), py::arg("block_ids_ptr"), py::arg("num_blocks"), py::arg("chunk_ptr"), py::arg("skip"),
          py::arg("to_chunk"), py::arg("after_stream"), py::arg("batched") = true,
          py::call_guard<py::gil_scoped_release>(),
          "Copies paged blocks to (to_chunk) or from a canonical chunk in host memory, as one batch.")
      .def("order_after", &CopyEngine::order_after, py::arg("ticket"), py::arg("stream"));

  py::class_<MapFuture>(m, "MapFuture")
      .def("done", &MapFuture::done)
      .def("result", &MapFuture::result, py::call_guard<py::gil_scoped_release>());
  py::class_<WriteFuture>(m, "WriteFuture")
      .def("done", &WriteFuture::done)
      .def("result", &WriteFuture::result, py::call_guard<py::gil_scoped_release>());
  py::class_<ReadFuture>(m, "ReadFuture")
      .def("done", &ReadFuture::done)
      .def("result", &ReadFuture::result, py::call_guard<py::gil_scoped_release>());

  py::class_<FileEngine>(m, "FileEngine")
      .def(py::init<std::size_t>(), py::arg("num_threads"))
      .def_property_readonly("num_threads", &FileEngine::num_threads)
      .def(
          "write",
          [](FileEngine& e, std::string final_path, std::string tmp_path, BufferPtr buf,
             std::size_t size, int mode, bool sync) {
            return WriteFuture{e.write(std::move(final_path), std::move(tmp_path), std::move(buf),
                                       size, to_mode(mode), sync)};
          },
          py::arg("final_path"), py::arg("tmp_path"), py::arg("buffer"), py::arg("size"),
          py::arg("direct"), py::arg("sync") = true)
      .def(
          "read",
          [](FileEngine& e, std::string path, int mode, std::size_t max_size, bool hash_payload) {
            return ReadFuture{e.read(std::move(path), to_mode(mode), max_size, hash_payload)};
          },
          py::arg("path"), py::arg("direct"), py::arg("max_size"), py::arg("hash_payload") = false,
          py::call_guard<py::gil_scoped_release>())  // a cold file's readahead is asked for on this thread
      .def(
          "map",
          [](FileEngine& e, std::string path, std::size_t max_size, bool hash_payload) {
            return MapFuture{e.map(std::move(path), max_size, hash_payload)};
          },
          py::arg("path"), py::arg("max_size"), py::arg("hash_payload") = false,
          py::call_guard<py::gil_scoped_release>(),
          "Maps a whole file on an I/O thread (pages brought in, payload hashed there).")
      .def(
          "map_scatter",
          [](FileEngine& e, std::string path, std::size_t max_size, const PagedLayout& layout, std::uintptr_t ids,
             std::size_t n, std::int64_t skip, std::size_t payload_bytes) {
            const auto* p = reinterpret_cast<const std::int64_t*>(ids);
            return MapFuture{e.map_scatter(std::move(path), max_size, layout, std::vector<std::int64_t>(p, p + n),
                                           skip, payload_bytes)};
          },
          py::arg("path"), py::arg("max_size"), py::arg("layout"), py::arg("block_ids_ptr"), py::arg("num_blocks"),
          py::arg("skip"), py::arg("payload_bytes"), py::call_guard<py::gil_scoped_release>(),
          "Maps a chunk file on an I/O thread and scatters its payload into the blocks while hashing it\n"
          "(when it is payload_bytes long). The blocks are written before the hash is checked.")
      .def("set_pool", &FileEngine::set_pool, py::arg("pool"), "Read buffers come from this HostPool (None: heap).")
      .def("readahead", &FileEngine::readahead, py::arg("path"), py::arg("max_size") = SIZE_MAX,
           py::call_guard<py::gil_scoped_release>(),
           "Starts reading the pages of a file the page cache lacks; True when some were missing.")
      .def("is_cold", &FileEngine::is_cold, py::arg("path"), py::arg("max_size") = SIZE_MAX,
           py::call_guard<py::gil_scoped_release>(),
           "True when most of a file's pages are not in the page cache.")
      .def_property("readahead_enabled", &FileEngine::readahead_enabled, &FileEngine::set_readahead,
                    "Whether loads ask for a cold file's pages when they are submitted (off by default).")
      .def(
          "inject_faults",
          [](FileEngine& e, const std::string& op, std::uint64_t every, int err) {
            if (op == "truncate") return e.inject_truncation(every);
            if (op == "refuse_direct") return e.inject_direct_refusal(every);
            if (op != "write" && op != "read")
              throw std::invalid_argument("op must be 'write', 'read', 'truncate' or 'refuse_direct'");
            e.inject_faults(op == "write", every, err);
          },
          py::arg("op"), py::arg("every"), py::arg("errno") = EIO,
          "For tests of error paths: every `every`-th write or read fails with `errno` (0 turns it off);\n"
          "'truncate': every `every`-th mapping has its file cut to half right after it is mapped;\n"
          "'refuse_direct': every `every`-th O_DIRECT read fails with EINVAL, as a file system may refuse it.")
      .def("counters", [](const FileEngine& e) {
        const IoCounters& c = e.counters();
        py::dict d;
        d["direct_writes"] = c.direct_writes.load();
        d["buffered_writes"] = c.buffered_writes.load();
        d["direct_reads"] = c.direct_reads.load();
        d["buffered_reads"] = c.buffered_reads.load();
        d["direct_fallbacks"] = c.direct_fallbacks.load();
        d["bytes_written"] = c.bytes_written.load();
        d["bytes_read"] = c.bytes_read.load();
        d["errors"] = c.errors.load();
        d["mapped_reads"] = c.mapped_reads.load();
        d["copied_while_verifying"] = c.copied_while_verifying.load();
        d["injected_faults"] = c.injected_faults.load();
        d["cold_reads"] = c.cold_reads.load();
        d["readahead_bytes"] = c.readahead_bytes.load();
        d["sigbus_faults"] = c.sigbus_faults.load();
        return d;
      });
}
