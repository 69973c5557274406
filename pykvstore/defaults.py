"""Process-wide knobs, each with a getter, a setter and a PYKVSTORE_* variable.

The environment is read once, at first use; `set()` changes a knob for stores
opened afterwards.
"""

from __future__ import annotations

import os
from typing import Any

from .affinity import parse_cpus
from .errors import InputError
from .sizes import parse_size

_MODES = {"off": 0, "auto": 1, "on": 2}
_COLD_READS = ("auto", "direct", "cache")


def parse_flag(value: Any) -> bool:
    """A yes/no setting: "0", "false", "no" and "off" (any case) are no; other strings yes."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


# name -> (environment variable, default, parser)
_SPEC: dict[str, tuple[str, str, Any]] = {
    "io_threads": ("PYKVSTORE_IO_THREADS", "4", int),
    # O_DIRECT for chunk writes: the data is fsynced anyway; skipping the page
    # cache saves a copy and keeps hot pages for the engine.
    "direct_write": ("PYKVSTORE_DIRECT_WRITE", "auto", str.lower),
    # Reads go through the page cache by default: a warm page cache is the
    # fastest tier after host memory. "auto"/"on" read with O_DIRECT.
    "direct_read": ("PYKVSTORE_DIRECT_READ", "off", str.lower),
    "host_capacity": ("PYKVSTORE_HOST_CAPACITY", "1GiB", lambda v: parse_size(v, "host capacity")),
    "inflight": ("PYKVSTORE_INFLIGHT", "8", int),  # chunk files in flight per put/get
    # freed staging buffers kept for reuse (a fresh one page-faults on every page)
    "buffer_cache": ("PYKVSTORE_BUFFER_CACHE", "512MiB", lambda v: parse_size(v, "buffer cache")),
    # The host pool (pinned where a GPU exists) that staging buffers, reads and
    # the host tier share; "auto" is the host capacity plus 512 MiB of staging.
    "host_pool": ("PYKVSTORE_HOST_POOL", "auto", lambda v: 0 if str(v).lower() in ("auto", "0") else parse_size(v, "host pool")),
    # Loads into host memory copy straight from a mapping of the chunk file
    # (the page cache) into the engine's blocks: "auto" (when direct_read is off) or "off".
    "mmap_read": ("PYKVSTORE_MMAP_READ", "auto", str.lower),
    "fsync": ("PYKVSTORE_FSYNC", "1", parse_flag),
    # A chunk file mostly out of the page cache (a cold restart; or a chunk just
    # written with O_DIRECT): "direct" reads it with O_DIRECT into a pool buffer,
    # which spends no CPU filling the page cache (0.84-1.0x the disk's limit on
    # a shared 2-core VM, where the page cache held it to 0.3-0.5x) but leaves the
    # file cold; "cache" reads it through the page cache like a warm one, which
    # then serves the next loads; "auto" reads direct when the host tier keeps
    # all that the load reads (its next load is a memory hit), else through the
    # page cache (a load larger than the host tier, or no host tier).
    "cold_read": ("PYKVSTORE_COLD_READ", "auto", str.lower),
    # A store opened over its model's chunks faults in, on a thread, the pool
    # pages a cold load of them would write (an unpinned pool commits a page
    # at its first write, inside the first load's reads otherwise): "auto" or "off".
    "prefault": ("PYKVSTORE_PREFAULT", "auto", str.lower),
    # Reads through the page cache ask, when submitted, for the missing pages of
    # every file in flight (a deep disk queue where the device's readahead
    # window is small). Off: on the machine it was measured on it cost CPU and
    # gained nothing (benchmarks/bench_transfer.py, cold_get).
    "readahead": ("PYKVSTORE_READAHEAD", "0", parse_flag),
    # CPUs the store's own threads (I/O, get, put, recorder) start on, "2-3" or
    # "0,4": a CPU engine's compute cores stay its own. Empty: the opening thread's.
    "io_cpus": ("PYKVSTORE_IO_CPUS", "", parse_cpus),
}
_values: dict[str, Any] = {}


def _check(name: str, value: Any) -> Any:
    if name in ("direct_write", "direct_read") and value not in _MODES:
        raise InputError(f"{name} must be one of off/auto/on, got {value!r}")
    if name == "cold_read" and value not in _COLD_READS:
        raise InputError(f"cold_read must be one of {'/'.join(_COLD_READS)}, got {value!r}")
    if name in ("mmap_read", "prefault") and value not in ("off", "auto"):
        raise InputError(f"{name} must be off or auto, got {value!r}")
    if name in ("io_threads", "inflight") and (not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def get(name: str) -> Any:
    """The current value of a knob (environment variable, else built-in default)."""
    if name not in _SPEC:
        raise InputError(f"unknown setting {name!r}; known: {', '.join(sorted(_SPEC))}")
    if name not in _values:
        env, default, parse = _SPEC[name]
        raw = os.environ.get(env, default)
        try:
            _values[name] = _check(name, parse(raw))
        except (ValueError, TypeError) as e:
            raise InputError(f"{env}={raw!r} is not valid: {e}") from None
    return _values[name]


def set(**knobs: Any) -> None:  # noqa: A001 - mirrors get()
    """Change knobs for stores opened after the call: `defaults.set(io_threads=8)`."""
    for name, value in knobs.items():
        if name not in _SPEC:
            raise InputError(f"unknown setting {name!r}; known: {', '.join(sorted(_SPEC))}")
        if name in ("host_capacity", "buffer_cache"):
            value = parse_size(value, name.replace("_", " "))
        if name == "host_pool":
            value = _SPEC[name][2](value)
        if name == "io_cpus":
            value = parse_cpus(value)
        if name == "cold_read" and isinstance(value, str):
            value = value.strip().lower()
        _values[name] = _check(name, value)


def direct_mode(name: str) -> int:
    """The knob as the native engine's mode number (0 off, 1 auto, 2 on)."""
    return _MODES[get(name)]


def as_dict() -> dict[str, Any]:
    return {name: get(name) for name in _SPEC}
