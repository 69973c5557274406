// What the CUDA runtime offers at run time. Built from a .cu file where the
// toolkit exists at build time, from a stub otherwise.
#pragma once

#include <cstddef>

namespace pykvstore {

bool cuda_compiled() noexcept;
// Visible devices; 0 when there is no driver or no device (never throws).
int cuda_device_count() noexcept;
// CUDA runtime version (e.g. 13000), 0 when not compiled.
int cuda_runtime_version() noexcept;
// Page-locked host memory (cudaHostAlloc, portable to every device), nullptr
// when it cannot be had; freed with cuda_host_free.
void* cuda_host_alloc(std::size_t bytes) noexcept;
void cuda_host_free(void* p) noexcept;

}  // namespace pykvstore
