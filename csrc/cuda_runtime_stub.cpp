// The build without a CUDA toolkit: the same queries, answering "none".
#include "pykvstore/cuda_runtime_info.hpp"

namespace pykvstore {

bool cuda_compiled() noexcept { return false; }
int cuda_device_count() noexcept { return 0; }
int cuda_runtime_version() noexcept { return 0; }

void* cuda_host_alloc(std::size_t) noexcept { return nullptr; }
void cuda_host_free(void*) noexcept {}

}  // namespace pykvstore
