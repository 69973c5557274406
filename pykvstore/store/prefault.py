"""Faults in the host pool's first pages at open, so a cold restart's first load does not.

A pool that is not pinned is reserved, not committed (MAP_NORESERVE): each
page is faulted in the first time anything writes it. A cold load reads
with O_DIRECT into pool buffers the host tier then keeps, so the first load
of a restarted process pays that first touch inside its reads: on the shared
2-core VM this was measured on (huge pages, compacted at fault time) a fresh
process's first cold get ran 0.1-0.5 GB/s, and 1.5-1.7 GB/s once the pool was
faulted in beforehand (benchmarks/results/2026-11-30-cpu-transfer-cold-auto.json).

A store opened over a bucket that holds its model's chunks starts one
daemon thread here that asks the kernel to populate (MADV_POPULATE_WRITE)
as much of the pool as a load of them could use: the lesser of those bytes
and the pool's size, from the pool's start (a fresh pool hands out its
lowest offsets first). That runs while the engine loads its weights. The
kernel only fills in missing pages: a page in use is never written, so
the thread needs no lock against buffers handed out meanwhile. A pinned pool
(cudaHostAlloc) is committed at allocation; a kernel older than 5.14 lacks
the flag; both skip this. The thread holds the pool until it ends, so a
store closed meanwhile frees its pool a slice later.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Optional

log = logging.getLogger("pykvstore")

MADV_POPULATE_WRITE = 23  # linux/mman.h, since 5.14
_SLICE = 64 << 20  # one madvise call; the thread stops between slices when told to


def _madvise() -> Optional[Any]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def populate(pool: Any, nbytes: int, stop: threading.Event) -> int:
    """Faults in the pool's first `nbytes` (whole pages), a slice at a time; returns the bytes done.
    Runs on the prefault thread (ctypes releases the GIL for each call)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    done = 0
    while done < nbytes and not stop.is_set():
        n = min(_SLICE, nbytes - done)
        if madvise(pool.base + done, n, MADV_POPULATE_WRITE) != 0:
            log.debug("host pool prefault stopped at %d bytes: errno %d", done, ctypes.get_errno())
            break
        done += n
    return done


_running: dict[int, threading.Thread] = {}  # pool base -> its thread (a salted view shares its store's pool)
_lock = threading.Lock()


def start(pool: Any, wanted: int) -> Optional[threading.Thread]:
    """Starts faulting in min(wanted, pool capacity) bytes of an unpinned pool on a
    daemon thread (None: nothing to do); the pool's thread already running, when
    there is one. The thread's `stop` event ends it early; its `done` attribute
    holds the bytes faulted in once it has finished. Caller's thread (store open)."""
    stats = pool.stats()
    page = 4096
    nbytes = -(-min(wanted, stats["capacity"]) // page) * page
    if nbytes <= 0 or stats["pinned"]:
        return None
    with _lock:
        running = _running.get(pool.base)
        if running is not None and running.is_alive():
            return running
        stop = threading.Event()

        def run() -> None:
            try:
                thread.done = populate(pool, nbytes, stop)  # type: ignore[attr-defined]
            finally:
                with _lock:
                    if _running.get(pool.base) is thread:
                        del _running[pool.base]

        thread = threading.Thread(target=run, name="pykvstore-prefault", daemon=True)
        thread.stop, thread.done, thread.nbytes = stop, 0, nbytes  # type: ignore[attr-defined]
        _running[pool.base] = thread
        thread.start()
    return thread
