#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "pykvstore/copy_engine.hpp"

namespace pykvstore {
namespace {

void check(cudaError_t err, const char* op) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw std::runtime_error(std::string(op) + " failed: " + cudaGetErrorString(err));
  }
}

// Runtime calls act on the calling thread's current device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

}  // namespace

CopyTicket::~CopyTicket() {
  if (event_ != nullptr) cudaEventDestroy(as_event(event_));
}

bool CopyTicket::done() const {
  cudaError_t err = cudaEventQuery(as_event(event_));
  if (err == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(err, "cudaEventQuery");
  return true;
}

void CopyTicket::wait() const {
  DeviceScope scope(device_);
  check(cudaEventSynchronize(as_event(event_)), "cudaEventSynchronize (a device copy)");
}

CopyEngine::CopyEngine(int device) : device_(device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error("CopyEngine needs a CUDA device, and none is visible");
  }
  if (device < 0 || device >= count)
    throw std::invalid_argument("CopyEngine: device " + std::to_string(device) + " is not in [0, " +
                                std::to_string(count) + ")");
  DeviceScope scope(device_);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  stream_ = s;
#if CUDART_VERSION >= 12080
  int driver = 0;
  batch_api_ = cudaDriverGetVersion(&driver) == cudaSuccess && driver >= 12080;
#endif
}

CopyEngine::~CopyEngine() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(as_stream(stream()));
    cudaStreamDestroy(as_stream(stream()));
  }
}

std::shared_ptr<CopyTicket> CopyEngine::copy(const std::vector<std::uintptr_t>& dsts,
                                             const std::vector<std::uintptr_t>& srcs,
                                             const std::vector<std::size_t>& sizes, std::uintptr_t after_stream,
                                             bool batched) {
  if (dsts.size() != srcs.size() || dsts.size() != sizes.size())
    throw std::invalid_argument("CopyEngine.copy: dsts, srcs and sizes differ in length");
  DeviceScope scope(device_);
  cudaStream_t s = as_stream(stream());
  // Order after the caller's stream: its pending writes to the source land first.
  cudaEvent_t ready = nullptr;
  check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t err = cudaEventRecord(ready, as_stream(after_stream));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(s, ready, 0);
  cudaEventDestroy(ready);  // destruction is deferred until the wait completes
  check(err, "ordering the copy stream after the caller's stream");

  const std::size_t n = dsts.size();
  bool issued = false;
#if CUDART_VERSION >= 12080
  if (batched && batch_api_ && n > 1) {
    cudaMemcpyAttributes attr = {};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    std::size_t attr_index = 0;
    auto* d = reinterpret_cast<void* const*>(dsts.data());
    auto* src = reinterpret_cast<const void* const*>(srcs.data());
#if CUDART_VERSION >= 13000
    err = cudaMemcpyBatchAsync(d, src, sizes.data(), n, &attr, &attr_index, 1, s);
#else
    std::size_t fail_index = 0;
    err = cudaMemcpyBatchAsync(const_cast<void**>(d), const_cast<void**>(src), const_cast<std::size_t*>(sizes.data()),
                               n, &attr, &attr_index, 1, &fail_index, s);
#endif
    if (err == cudaSuccess) {
      issued = true;
    } else if (err == cudaErrorNotSupported || err == cudaErrorInvalidValue) {
      cudaGetLastError();  // e.g. pageable host memory on an older driver: copy one by one
      batch_api_ = false;
    } else {
      check(err, "cudaMemcpyBatchAsync");
    }
  }
#endif
  if (!issued) {
    for (std::size_t i = 0; i < n; ++i)
      check(cudaMemcpyAsync(reinterpret_cast<void*>(dsts[i]), reinterpret_cast<const void*>(srcs[i]), sizes[i],
                            cudaMemcpyDefault, s),
            "cudaMemcpyAsync");
  }
  cudaEvent_t done = nullptr;
  check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  auto ticket = std::make_shared<CopyTicket>(done, device_);
  check(cudaEventRecord(done, s), "cudaEventRecord");
  return ticket;
}

void CopyEngine::order_after(const CopyTicket& ticket, std::uintptr_t stream) {
  DeviceScope scope(device_);
  check(cudaStreamWaitEvent(as_stream(stream), as_event(ticket.event()), 0), "cudaStreamWaitEvent");
}

}  // namespace pykvstore
