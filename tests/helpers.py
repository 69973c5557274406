"""Test helpers: engine-shaped caches of random bytes and an independent,
token-by-token reference reader for every dims form."""

from __future__ import annotations

import os
import pathlib
import uuid

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import _C

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def axis_sizes(dims: str, layers: int, blocks: int, bs: int, heads: int, hd: int) -> dict[str, int]:
    latent = "H" not in dims
    return {"L": layers, "B": blocks, "T": bs, "H": heads, "D": hd, "2": 2,
            "C": hd if latent else 2 * hd}


def random_tensor(shape, dtype, gen: torch.Generator) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    n = int(np.prod(shape)) * size
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).view(dtype).view(shape)


def make_cache(dims: str, *, layers=3, blocks=24, bs=8, heads=2, hd=16, dtype=torch.bfloat16,
               seed=0, noncontiguous=False, zero=False):
    """Engine tensors for `dims` (a list, or one tensor when dims has L).

    noncontiguous: allocate with the axes reversed and permute back, so the
    tensors have the right shape but unusual strides.
    """
    sizes = axis_sizes(dims, layers, blocks, bs, heads, hd)
    gen = torch.Generator().manual_seed(seed)
    layer_dims = dims if "L" in dims else dims

    def one() -> torch.Tensor:
        shape = [sizes[c] for c in layer_dims]
        if noncontiguous:
            t = random_tensor(shape[::-1], dtype, gen).permute(*reversed(range(len(shape))))
        else:
            t = random_tensor(shape, dtype, gen)
        return torch.zeros_like(t) if zero else t

    if "L" in dims:
        return one()
    return [one() for _ in range(layers)]


def token_kv(layer: torch.Tensor, dims: str, block: int, slot: int) -> torch.Tensor:
    """One token's KV from one layer tensor as (planes, heads, head_dim), by plain indexing."""
    idx = [slice(None)] * layer.dim()
    idx[dims.index("B")] = block
    idx[dims.index("T")] = slot
    x = layer[tuple(idx)]
    rest = dims.replace("B", "").replace("T", "")
    if "2" in rest:
        return x.permute([rest.index(c) for c in "2HD"])
    if "H" in rest:
        x = x.permute([rest.index(c) for c in "HC"])  # (H, 2D): K then V
        h, c = x.shape
        return torch.stack([x[:, : c // 2], x[:, c // 2 :]])
    return x.reshape(1, 1, -1)  # MLA latent


def layers_of(cache, dims: str) -> tuple[list[torch.Tensor], str]:
    if "L" in dims:
        li = dims.index("L")
        return list(cache.unbind(li)), dims.replace("L", "")
    return list(cache), dims


def reference(cache, dims: str, block_ids, bs: int, start: int, end: int) -> torch.Tensor:
    """Tokens [start, end) of the cache as (layers, planes, tokens, heads, head_dim), integer view."""
    layers, ldims = layers_of(cache, dims)
    out = []
    for layer in layers:
        toks = [token_kv(layer, ldims, int(block_ids[t // bs]), t % bs) for t in range(start, end)]
        out.append(torch.stack(toks, dim=1))
    t = torch.stack(out)
    return t.view(INT_VIEW[t.element_size()])


def tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50000, n)


def block_table(n: int, total: int, seed: int = 0) -> np.ndarray:
    """n distinct block ids out of `total`, shuffled like an engine's free list."""
    return np.random.default_rng(seed + 100).permutation(total)[:n]


def paged(cache, dims) -> kv.PagedKV:
    return kv.PagedKV(cache, dims=dims)


def drop_page_cache(paths) -> None:
    """Writes back and drops the files' pages from the page cache (a cold restart's view)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_dir(tmp_path) -> pathlib.Path:
    """A directory whose files leave the page cache when told to (not tmpfs):
    tmp_path, else one under the checkout's test-artifacts/; skips the test when neither does."""
    for d in (tmp_path, pathlib.Path(__file__).resolve().parents[1] / "test-artifacts" / uuid.uuid4().hex):
        d.mkdir(parents=True, exist_ok=True)
        probe = d / "probe"
        probe.write_bytes(b"\1" * (1 << 20))
        drop_page_cache([probe])
        if _C.FileEngine(1).is_cold(str(probe)):
            return d
    pytest.skip("no file system here drops pages from its cache (tmpfs only)")


def resident(address: int, length: int) -> list[bool]:
    """Which pages of this process's memory at [address, address + length) are faulted in (mincore)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    vec = (ctypes.c_ubyte * (-(-length // 4096)))()
    assert libc.mincore(address, length, vec) == 0, ctypes.get_errno()
    return [bool(v & 1) for v in vec]


# Under ASan (tests/run_sanitized.sh) a pool offset o lives at base + 2o (host_pool.hpp's kAddressSpread).
SPREAD = 2 if os.environ.get("PYKVSTORE_SANITIZED") == "address" else 1
