#include "pykvstore/sigbus_guard.hpp"

#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include <atomic>
#include <mutex>

namespace pykvstore {
namespace {

// One armed region on one thread: lives on run_guarded's stack, trivially destructible.
struct Region {
  sigjmp_buf env;
  std::uintptr_t lo;
  std::uintptr_t hi;
};

// The armed region of this thread. (Not initial-exec: a dlopen'ed module gets no
// static TLS once torch has taken it.) A thread touches it before it arms, so the
// handler reading it never makes the loader allocate; threads that never armed
// are not asked while no region is armed anywhere (armed == 0).
thread_local Region* volatile tl_region = nullptr;
std::atomic<int> armed{0};
// An unguarded SIGBUS was passed on to the previous handler since ours was installed.
std::atomic<int> passed_on{0};

std::mutex install_mutex;
struct sigaction previous;  // written under install_mutex before ours is installed, read by the handler
std::atomic<std::uint64_t> caught{0};

void on_sigbus(int sig, siginfo_t* info, void* /*context*/) {
  // si_code > 0: the kernel raised it for an access (BUS_ADRERR...), so si_addr is the address.
  // A sent signal (kill -BUS) never reads this thread's TLS, which a thread that never armed
  // a region may not have yet (its first touch could allocate inside this handler).
  const bool fault = info != nullptr && info->si_code > 0;
  Region* r = fault && armed.load(std::memory_order_acquire) > 0 ? tl_region : nullptr;
  if (r != nullptr) {
    const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
    if (addr >= r->lo && addr < r->hi) {
      tl_region = nullptr;
      siglongjmp(r->env, 1);
    }
  }
  // Not ours: step aside for the handler that was there before. A fault
  // returns into the faulting access, which faults again into that handler; a
  // sent signal is sent again. Should it come back here (a handler that chains
  // to the one it replaced, which was ours), the default action ends it.
  int saved = errno;
  if (passed_on.exchange(1) != 0) {
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
  } else {
    ::sigaction(sig, &previous, nullptr);
  }
  if (info == nullptr || info->si_code <= 0) ::raise(sig);  // delivered once this handler returns
  errno = saved;
}

bool is_ours(const struct sigaction& sa) {
  return (sa.sa_flags & SA_SIGINFO) && sa.sa_sigaction == on_sigbus;
}

// Installs the handler unless it is the current one; false when disabled.
bool ensure_installed() {
  struct sigaction cur;
  if (::sigaction(SIGBUS, nullptr, &cur) == 0 && is_ours(cur)) return true;
  static const bool disabled = [] {
    const char* v = std::getenv("PYKVSTORE_SIGBUS_GUARD");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  if (disabled) return false;
  std::lock_guard<std::mutex> lock(install_mutex);
  if (::sigaction(SIGBUS, nullptr, &cur) != 0) return false;
  if (is_ours(cur)) return true;
  previous = cur;
  passed_on.store(0);
  struct sigaction ours;
  std::memset(&ours, 0, sizeof ours);
  ours.sa_sigaction = on_sigbus;
  ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&ours.sa_mask);
  return ::sigaction(SIGBUS, &ours, nullptr) == 0;
}

struct Copy {
  void* dst;
  const void* src;
  std::size_t n;
};

void copy_fn(void* arg) {
  auto* c = static_cast<Copy*>(arg);
  std::memcpy(c->dst, c->src, c->n);
}

// The region's frame: only trivially destructible objects live here across sigsetjmp.
__attribute__((noinline)) bool run_armed(Region* r, void (*fn)(void*), void* arg) noexcept {
  tl_region = nullptr;  // this thread's TLS exists before the handler may read it
  armed.fetch_add(1, std::memory_order_acq_rel);
  if (sigsetjmp(r->env, 1) != 0) {  // the mask SIGBUS was blocked in is restored
    armed.fetch_sub(1, std::memory_order_acq_rel);
    return false;
  }
  tl_region = r;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  fn(arg);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  tl_region = nullptr;
  armed.fetch_sub(1, std::memory_order_acq_rel);
  return true;
}

}  // namespace

bool run_guarded(const void* base, std::size_t len, void (*fn)(void*), void* arg) noexcept {
  try {
    ensure_installed();  // disabled or failed: fn runs unguarded, as before this guard existed
  } catch (...) {        // std::system_error from the mutex: still run, unguarded
  }
  Region r;
  r.lo = reinterpret_cast<std::uintptr_t>(base);
  r.hi = r.lo + len;
  if (run_armed(&r, fn, arg)) return true;
  caught.fetch_add(1, std::memory_order_relaxed);
  return false;
}

bool guarded_copy(void* dst, const void* src, std::size_t n, const void* base, std::size_t len) noexcept {
  Copy c{dst, src, n};
  return run_guarded(base, len, copy_fn, &c);
}

std::uint64_t sigbus_faults_caught() noexcept { return caught.load(std::memory_order_relaxed); }

}  // namespace pykvstore
