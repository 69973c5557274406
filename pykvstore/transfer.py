"""Device <-> host copies of paged KV through the native copy engine.

A chunk moves between an engine's CUDA blocks and a canonical chunk in host
memory (pinned when it comes from the store's HostPool) as one batch of DMA
copies on a dedicated stream: no staging buffer on the device, no SMs, and the
copy stream is ordered after the caller's current stream, never the reverse
for stores. Loads make the caller's stream wait on the device for the copies,
so the engine's next kernels see the KV without the host blocking.

Used for layouts where each (layer, plane, block) is one contiguous run (every
vLLM CUDA layout); other layouts go through the Triton gather/scatter kernels.

Every chunk copy is counted by the path that moved it (`copy_counts()`), on
whichever thread ran the copy: the paths fall back on one another and move the
same bytes, so only the count shows which one really ran.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Optional

import torch

from . import _C

_engines: dict[int, Optional["_C.CopyEngine"]] = {}
_lock = threading.Lock()
_copies: Counter = Counter()
_copies_lock = threading.Lock()

# How a chunk moved between an engine's blocks and host memory.
COPY_PATHS = (
    "native",      # host blocks: the C++ block copier (memcpy over runs)
    "dma",         # CUDA blocks: this module's copy engine
    "kernels",     # device blocks: the Triton gather/scatter kernels
    "torch",       # device blocks: torch indexing (no triton, or layers with different strides)
    "torch_host",  # host blocks whose layers do not share strides: torch indexing
)


def count_copy(direction: str, path: str) -> None:
    """Records one chunk moved (direction "gather" or "scatter") by `path`."""
    with _copies_lock:
        _copies[f"{direction}_{path}"] += 1


def copy_counts() -> dict[str, int]:
    """Chunks gathered and scattered through PagedKV in this process, per path:
    {"gather_dma": 3, ...}. Every direction x path key is present (0 when that
    path never ran). Loads the I/O threads copy into host blocks while they
    verify are counted by the file engine instead (io "copied_while_verifying").
    """
    with _copies_lock:
        return {f"{d}_{p}": _copies[f"{d}_{p}"] for d in ("gather", "scatter") for p in COPY_PATHS}


def copy_engine(device: torch.device) -> Optional["_C.CopyEngine"]:
    """The copy engine of a CUDA device (one per process and device), or None
    where the extension has no CUDA or the device cannot be used."""
    if device.type != "cuda" or not _C.cuda_compiled:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if index not in _engines:
            try:
                _engines[index] = _C.CopyEngine(index)
            except (RuntimeError, ValueError):
                _engines[index] = None
        return _engines[index]


def block_contiguous(view: torch.Tensor) -> bool:
    """True when every (block, plane) of a canonical (B, planes, T, H, D) view is one run."""
    _, _, t, h, d = view.shape
    s = view.stride()
    return s[4] == 1 and (h == 1 or s[3] == d) and (t == 1 or s[2] == h * d)


def gather(engine: "_C.CopyEngine", layout: "_C.PagedLayout", ids: torch.Tensor, out: torch.Tensor,
           device: torch.device) -> None:
    """Device blocks `ids` (a host int64 tensor) -> host chunk `out`; returns when the bytes are there."""
    stream = torch.cuda.current_stream(device).cuda_stream  # pragma: gpu
    engine.copy_blocks(layout, ids.data_ptr(), len(ids), out.data_ptr(), 0, True, stream).wait()  # pragma: gpu
    count_copy("gather", "dma")  # pragma: gpu


def scatter(engine: "_C.CopyEngine", layout: "_C.PagedLayout", ids: torch.Tensor, src: torch.Tensor, skip: int,
            device: torch.device) -> "_C.CopyTicket":
    """Host chunk `src` -> device blocks `ids`, tokens [skip, end). Returns at once:
    the caller's stream is ordered after the copies, and `src` must stay alive
    until the returned ticket is done (wait() on it)."""
    stream = torch.cuda.current_stream(device).cuda_stream  # pragma: gpu
    ticket = engine.copy_blocks(layout, ids.data_ptr(), len(ids), src.data_ptr(), skip, False, stream)  # pragma: gpu
    engine.order_after(ticket, stream)  # pragma: gpu
    count_copy("scatter", "dma")  # pragma: gpu
    return ticket  # pragma: gpu
