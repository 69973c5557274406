// The build without a CUDA toolkit: no device copies exist.
#include <stdexcept>

#include "pykvstore/copy_engine.hpp"

namespace pykvstore {

namespace {
[[noreturn]] void unavailable() {
  throw std::runtime_error("pykvstore was built without CUDA: device copies are unavailable");
}
}  // namespace

CopyTicket::~CopyTicket() = default;
bool CopyTicket::done() const { unavailable(); }
void CopyTicket::wait() const { unavailable(); }
CopyEngine::CopyEngine(int device) : device_(device) { unavailable(); }
CopyEngine::~CopyEngine() = default;
std::shared_ptr<CopyTicket> CopyEngine::copy(const std::vector<std::uintptr_t>&, const std::vector<std::uintptr_t>&,
                                             const std::vector<std::size_t>&, std::uintptr_t, bool) {
  unavailable();
}
void CopyEngine::order_after(const CopyTicket&, std::uintptr_t) { unavailable(); }

}  // namespace pykvstore
