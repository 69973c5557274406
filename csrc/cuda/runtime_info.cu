// Built only where a CUDA toolkit exists. Queries never throw: a machine
// without a driver or device reports zero devices.
#include <cuda_runtime.h>

#include "pykvstore/cuda_runtime_info.hpp"

namespace pykvstore {

bool cuda_compiled() noexcept { return true; }

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

int cuda_runtime_version() noexcept {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

void* cuda_host_alloc(std::size_t bytes) noexcept {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}

void cuda_host_free(void* p) noexcept {
  if (p != nullptr) cudaFreeHost(p);
}

}  // namespace pykvstore
