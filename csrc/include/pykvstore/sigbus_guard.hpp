// SIGBUS from a mapped chunk file, turned into a failed read instead of a dead
// process. A file truncated in place while it is mapped (a `cp` over it, another
// process cutting it short) makes every access past its new end raise SIGBUS;
// "a cache never kills its engine" holds only if every touch of a chunk
// mapping runs inside run_guarded.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pykvstore {

// Runs fn(arg) on this thread; a SIGBUS the kernel raises for an access inside
// [base, base + len) ends fn at once (siglongjmp) and run_guarded returns false.
// fn must be a plain loop over memory: no objects with destructors, no locks,
// no allocation, no exceptions, since a fault leaves its frame without
// unwinding. Whatever fn wrote before the fault stays written.
//
// The process-wide handler is installed on first use (and again if someone
// replaced it since). A SIGBUS outside a guarded range (another mapping,
// another thread, a kill -BUS) goes to the handler that was there before (the
// default action, ASan's report, faulthandler) exactly once: ours steps aside,
// and a second visit takes the default action, so handlers that chain back to
// ours cannot loop. PYKVSTORE_SIGBUS_GUARD=0 in the environment leaves SIGBUS
// alone (a fault then kills the process, as it would without this guard).
bool run_guarded(const void* base, std::size_t len, void (*fn)(void*), void* arg) noexcept;

// memcpy(dst, src, n) from inside the guarded range [base, base + len); false on SIGBUS.
bool guarded_copy(void* dst, const void* src, std::size_t n, const void* base, std::size_t len) noexcept;

// SIGBUS faults turned into failures so far, process-wide.
std::uint64_t sigbus_faults_caught() noexcept;

}  // namespace pykvstore
