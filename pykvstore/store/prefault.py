"""Faults in the host pool's first pages at open, so a cold restart's first load does not.

A pool that is not pinned is reserved, not committed (MAP_NORESERVE): each
page is faulted in the first time anything writes it. A cold load reads
with O_DIRECT into pool buffers the host tier then keeps, so the first load
of a restarted process pays that first touch inside its reads: on the shared
2-core VM this was measured on (huge pages, compacted at fault time) a fresh
process's first cold get ran 0.1-0.5 GB/s, and 1.5-1.7 GB/s once the pool was
faulted in beforehand (benchmarks/results/2026-11-30-cpu-transfer-cold-auto.json).
With the native prefault, medians of 1.8-2.0 GB/s with the pool's huge pages
and 1.2-1.6 without (0.3-0.5 and 1.0-1.1 with no prefault: huge pages are
compacted at first touch), so the pool keeps them
(benchmarks/results/2026-11-30-cpu-transfer-prefault-native.json).

A store opened over a bucket that holds its model's chunks starts one
daemon thread here that has the pool populate (HostPool.prefault: C++,
MADV_POPULATE_WRITE by 64 MiB slices, without the GIL) as much of itself as a
load of them could use: the lesser of those bytes and the pool's size, from
the pool's start (a fresh pool hands out its lowest offsets first). That runs
while the engine loads its weights. This module owns the policy (whether, how
much, one thread per pool); the pool owns the bytes and how they are touched.
The kernel only fills in missing pages: a page in use is never written, so
the thread needs no lock against buffers handed out meanwhile. A pinned pool
(cudaHostAlloc) is committed at allocation; a kernel older than 5.14 lacks
the flag; the native call does nothing for either. The thread holds the pool
until it ends: a store's close calls stop(), so the pool stops after its
current slice and is freed then, not after the whole prefault.

After that, puts and loads keep AHEAD (256 MiB) of pool pages faulted in past
what is allocated (keep_ahead), on the same kind of thread: a put_async stages
inside the engine's step, into fresh pool memory whenever its chunks stay in
the host tier, and there its first touches had cost 5-10 ms of system time per
3 MB request on bench_serving's zero-reuse traffic (6% of throughput).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Optional

from .. import affinity

log = logging.getLogger("pykvstore")

PAGE = 4096


def populate(pool: Any, nbytes: int) -> int:
    """Faults in the pool's first `nbytes` (whole pages); returns the bytes done (fewer
    when stopped, 0 for a pinned pool or an old kernel). Runs on the prefault thread;
    the native call releases the GIL."""
    done = int(pool.prefault(nbytes))
    if done < nbytes:
        log.debug("host pool prefault stopped at %d of %d bytes", done, nbytes)
    return done


def stop(pool: Any) -> None:
    """Ends the pool's prefault after its current slice, and any later one: the store
    closing it (caller's thread; it does not wait for the prefault thread)."""
    pool.stop_prefault()
    with _lock:
        _asked.pop(pool, None)


_running: dict[int, threading.Thread] = {}  # pool base -> its thread (a salted view shares its store's pool)
# pool -> the most bytes a thread was started for. Weak, by the pool object, not its address: a
# later pool may get the address (munmap, then a pool of the same size), and an ask made after
# stop (a get or put in flight while its store closes) must not make keep_ahead take that pool
# as faulted in already.
_asked: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()

# Ahead of use: the pool bytes kept faulted in beyond what is allocated. Puts
# keep their chunks in the host tier, so a store fed new prompts takes fresh
# pool memory for every put_async, whose staging copy runs in the engine's
# step: on bench_serving's zero-reuse traffic its first touches cost 5-10 ms
# of system time per request (3 MB), 6% of the server's throughput.
AHEAD = 256 << 20


def start(pool: Any, wanted: int, cpus: Optional[frozenset[int]] = None) -> Optional[threading.Thread]:
    """Starts faulting in min(wanted, pool capacity) bytes of an unpinned pool on a
    daemon thread running on `cpus` (None: nothing to do); the pool's thread already
    running, when there is one, which goes on to `wanted` if that is more than it
    was started for (warm_up's ask, right after an open that faults in a few MiB,
    is not dropped). stop(pool) ends it early; the thread's `done` attribute holds
    the bytes faulted in once it has finished. Caller's thread."""
    stats = pool.stats()
    nbytes = -(-min(wanted, stats["capacity"]) // PAGE) * PAGE
    if nbytes <= 0 or stats["pinned"]:
        return None
    with _lock:
        _asked[pool] = max(_asked.get(pool, 0), nbytes)
        running = _running.get(pool.base)
        if running is not None and running.is_alive():
            running.nbytes = max(running.nbytes, nbytes)  # type: ignore[attr-defined]
            return running

        def run() -> None:
            try:
                affinity.pin_current_thread(cpus)
                while True:
                    want = thread.nbytes  # type: ignore[attr-defined]
                    thread.done = populate(pool, want)  # type: ignore[attr-defined]
                    with _lock:  # start() sees this thread in _running only while it will still look at nbytes
                        if thread.done < want or thread.nbytes == want:  # type: ignore[attr-defined]
                            if _running.get(pool.base) is thread:  # stopped (or an old kernel), or no more asked
                                del _running[pool.base]
                            return
            finally:
                with _lock:
                    if _running.get(pool.base) is thread:
                        del _running[pool.base]

        thread = threading.Thread(target=run, name="pykvstore-prefault", daemon=True)
        thread.done, thread.nbytes = 0, nbytes  # type: ignore[attr-defined]
        _running[pool.base] = thread
        thread.start()
    return thread


def keep_ahead(pool: Any, cpus: Optional[frozenset[int]] = None) -> None:
    """After an allocation: when the pool's use has come within AHEAD/2 of what was
    faulted in, fault in up to AHEAD past it on the prefault thread. The caller's
    thread (the engine's, in put_async's staging) pays one stats() call, never a
    first touch. A store that stays small faults in no more than AHEAD."""
    stats = pool.stats()
    if stats["pinned"]:
        return
    used = stats["capacity"] - stats["free_bytes"]
    asked = _asked.get(pool, 0)
    if used + AHEAD // 2 > asked and asked < stats["capacity"]:
        start(pool, used + AHEAD, cpus)

