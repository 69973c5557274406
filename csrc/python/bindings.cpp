// The only file that knows Python: builds pykvstore._C from the C++ core.
// Raw objects only (buffers, futures, counters); pykvstore/ owns the policy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "pykvstore/aligned_buffer.hpp"
#include "pykvstore/cuda_runtime_info.hpp"
#include "pykvstore/error.hpp"
#include "pykvstore/file_engine.hpp"

namespace py = pybind11;
using namespace pykvstore;

namespace {

// A pending write: wait() and result() release the GIL while they block.
struct WriteFuture {
  std::shared_future<std::size_t> fut;
  bool done() const { return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  std::size_t result() const { return fut.get(); }
};

struct ReadFuture {
  std::shared_future<BufferPtr> fut;
  bool done() const { return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  BufferPtr result() const { return fut.get(); }
};

DirectMode to_mode(int m) {
  if (m < 0 || m > 2) throw std::invalid_argument("direct mode must be 0 (off), 1 (auto) or 2 (on)");
  return static_cast<DirectMode>(m);
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
  m.attr("cuda_compiled") = cuda_compiled();
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without driver or device).");
  m.def("cuda_runtime_version", &cuda_runtime_version, "CUDA runtime version, 0 when not compiled.");

  py::class_<AlignedBuffer, std::shared_ptr<AlignedBuffer>>(m, "AlignedBuffer", py::buffer_protocol())
      .def(py::init<std::size_t>(), py::arg("size"))
      .def_property_readonly("size", &AlignedBuffer::size)
      .def_property_readonly("capacity", &AlignedBuffer::capacity)
      .def_property_readonly("address",
                             [](const AlignedBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); })
      .def("__len__", &AlignedBuffer::size)
      .def_buffer([](AlignedBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {b.size()}, {std::size_t{1}});
      });

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
          [](FileEngine& e, std::string path, int mode, std::size_t max_size) {
            return ReadFuture{e.read(std::move(path), to_mode(mode), max_size)};
          },
          py::arg("path"), py::arg("direct"), py::arg("max_size"))
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
        return d;
      });
}
