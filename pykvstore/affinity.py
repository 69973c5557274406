"""Which CPUs a store's own threads run on.

A CPU serving engine binds its compute threads to cores: vLLM's CPU backend
pins its OpenMP threads (VLLM_CPU_OMP_THREADS_BIND) and holds other cores back
for everything else, one more whenever a KV connector is configured. A thread
starts with its creator's CPU set, so a store opened on the engine's main
thread would put its I/O, checksum and copy threads on the compute cores,
where every load and store preempts the forward pass (an OpenMP region waits
at each barrier for its slowest thread). A store given `io_cpus` starts every
thread it owns on those CPUs instead; `outside_current()` names the CPUs
neither the calling thread nor the OpenMP threads the environment binds are
on, the vLLM connector's default on a CPU server.

Linux only (sched_setaffinity); elsewhere every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator, Optional

from .errors import InputError

log = logging.getLogger("pykvstore")
_MAX_CPU = 1 << 16  # far beyond any machine; a larger number is a typo


def parse_cpus(spec: Any) -> Optional[frozenset[int]]:
    """A CPU set from "0,2-3", an iterable of ints, or None/"" (inherit: None).

    Raises InputError naming the problem for anything else (before a store opens).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "inherit")):
        return None
    cpus: set[int] = set()
    if isinstance(spec, str):
        for part in spec.split(","):
            cpus.update(_cpu_range(part.strip(), spec))
    elif isinstance(spec, (bytes, bytearray, memoryview)):  # its items are byte values, not CPU numbers
        raise InputError(f"io_cpus must be a string like '2-3' or a list of CPU numbers, got {spec!r}")
    else:
        try:
            items = list(spec)
        except TypeError:
            raise InputError(f"io_cpus must be a string like '2-3' or a list of CPU numbers, got {spec!r}") from None
        for c in items:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < _MAX_CPU:
                raise InputError(f"io_cpus: {c!r} is not a CPU number")
            cpus.add(c)
    if not cpus:
        raise InputError(f"io_cpus {spec!r} names no CPU")
    return frozenset(cpus)


def _cpu_range(part: str, spec: str) -> range:
    """The CPUs of one item of a list, "5" or "2-5"; InputError naming `spec` for anything else."""
    lo, sep, hi = part.partition("-")
    # ASCII digits only: str.isdigit() passes "²" (int() then raises a bare ValueError) and "١" (CPU 1)
    if not (lo.isascii() and lo.isdigit()) or (sep and not (hi.isascii() and hi.isdigit())):
        raise InputError(f"io_cpus: {part!r} in {spec!r} is not a CPU number or range like 2-5")
    a, b = int(lo), int(hi) if sep else int(lo)
    if b < a:
        raise InputError(f"io_cpus: range {part!r} in {spec!r} runs backwards")
    if b >= _MAX_CPU:
        raise InputError(f"io_cpus: CPU {b} in {spec!r} is out of range")
    return range(a, b + 1)


def _online() -> frozenset[int]:
    """The machine's online CPUs (what a thread could be bound to before any binding)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpus(f.read().strip()) or frozenset()
    except (OSError, InputError):
        return frozenset(range(os.cpu_count() or 1))


def _openmp_bound() -> frozenset[int]:
    """The CPUs the environment tells the OpenMP runtime to bind its threads to (plain lists only).

    vLLM's CPU backend sets one of these for each worker: GOMP_CPU_AFFINITY
    ("0 1 2", libgomp preloaded), KMP_AFFINITY's proclist=[0,1,2] (libiomp), or
    OMP_PLACES "{0,1,2}". The first two bind each thread to ONE of the CPUs
    (the engine's own thread to the first), so the calling thread's set alone
    does not name the compute cores. Forms with strides or place names are
    left out (the calling thread's set still counts).
    """
    kmp = re.search(r"proclist=\[([^\]]*)\]", os.environ.get("KMP_AFFINITY", ""))
    texts = (os.environ.get("GOMP_CPU_AFFINITY", "").replace(" ", ","), kmp.group(1) if kmp else "",
             os.environ.get("OMP_PLACES", "").replace("{", ",").replace("}", ","))
    cpus: set[int] = set()
    for text in texts:
        for part in text.split(","):
            try:
                cpus.update(_cpu_range(part.strip(), text))
            except InputError:  # a form this does not read (strides, place names): skipped
                pass
    return frozenset(cpus)


def outside_current() -> Optional[frozenset[int]]:
    """The online CPUs neither the calling thread nor the OpenMP threads the environment binds are on;
    None when there are none (or the thread may run on all of them)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    rest = _online() - frozenset(os.sched_getaffinity(0)) - _openmp_bound()
    return frozenset(rest) or None


def pin_current_thread(cpus: Optional[frozenset[int]]) -> bool:
    """Moves the calling thread onto `cpus`; False (and it stays where it was) if the kernel refuses.

    Runs as a thread pool's initializer, so it never raises: a CPU set the
    container does not allow costs placement, not the store.
    """
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, cpus)
        return True
    except OSError as e:
        log.info("pykvstore: cannot run store threads on CPUs %s (%s); they stay on the caller's", sorted(cpus), e)
        return False


@contextlib.contextmanager
def creating_threads_on(cpus: Optional[frozenset[int]]) -> Iterator[None]:
    """Threads started inside (Python's or the native engine's) start on `cpus`; the caller's set comes back after."""
    if cpus is None or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    moved = pin_current_thread(cpus)
    try:
        yield
    finally:
        if moved:
            os.sched_setaffinity(0, before)
