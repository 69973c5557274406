// Device<->host copies on a dedicated stream, so a store or load never sits
// on the engine's compute stream. Before copying, the copy stream waits on an
// event recorded on the caller's stream: no copy reads KV the engine has not
// finished writing. Many small copies go out as one batch where the runtime
// has cudaMemcpyBatchAsync (CUDA >= 12.8); they use the copy engines, not SMs.
// Built from a .cu file with a toolkit; the stub build throws on construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace pykvstore {

// The copies of one call, done when its event fires.
class CopyTicket {
 public:
  CopyTicket(void* event, int device) : event_(event), device_(device) {}
  ~CopyTicket();
  CopyTicket(const CopyTicket&) = delete;
  CopyTicket& operator=(const CopyTicket&) = delete;
  bool done() const;
  void wait() const;  // blocks the calling thread; throws on a copy error
  void* event() const noexcept { return event_; }

 private:
  void* event_;
  int device_;
};

class CopyEngine {
 public:
  explicit CopyEngine(int device);
  ~CopyEngine();
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  // Enqueues dsts[i] <- srcs[i] (sizes[i] bytes) after the work queued so far
  // on after_stream (a cudaStream_t; 0 is the legacy default stream).
  // batched=false issues one cudaMemcpyAsync per copy (the baseline).
  std::shared_ptr<CopyTicket> copy(const std::vector<std::uintptr_t>& dsts, const std::vector<std::uintptr_t>& srcs,
                                   const std::vector<std::size_t>& sizes, std::uintptr_t after_stream,
                                   bool batched = true);
  // Makes `stream` wait on the device (the host does not block) for a ticket.
  void order_after(const CopyTicket& ticket, std::uintptr_t stream);

  int device() const noexcept { return device_; }
  std::uintptr_t stream() const noexcept { return reinterpret_cast<std::uintptr_t>(stream_); }
  // True when copy() with batched=true uses cudaMemcpyBatchAsync.
  bool batch_api() const noexcept { return batch_api_; }

 private:
  int device_;
  void* stream_ = nullptr;
  bool batch_api_ = false;
};

}  // namespace pykvstore
