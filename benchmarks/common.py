"""Shared by the benchmark scripts."""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

# Llama-3-8B KV: 32 layers, 8 kv heads, head dim 128, bf16; engine block 16, chunk 256 (32 MiB).
LAYERS, HEADS, HEAD_DIM, BLOCK, CHUNK = 32, 8, 128, 16, 256


def best(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` runs in seconds: the run least disturbed by a noisy machine."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_interleaved(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Fastest run of each function, the functions taking turns: a figure and its
    baseline then see the same phases of a noisy machine."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def llama_cache(dims: str, blocks: int, device: str = "cpu") -> list[torch.Tensor]:
    """Llama-3-8B-shaped paged KV, one tensor per layer, random bf16."""
    shape = {"2BTHD": (2, blocks, BLOCK, HEADS, HEAD_DIM), "BHTC": (blocks, HEADS, BLOCK, 2 * HEAD_DIM),
             "BTHC": (blocks, BLOCK, HEADS, 2 * HEAD_DIM)}[dims]
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=torch.float32, device=device).to(torch.bfloat16)
            for _ in range(LAYERS)]


def drop_file_cache(paths) -> None:
    """Evicts files from the page cache (after writing back what is dirty)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_file_cache(paths) -> None:
    for f in paths:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
