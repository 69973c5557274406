"""Engine KV layouts and the canonical chunk order.

A `PagedKV` wraps an engine's KV tensors and a dims string naming the axes of
one layer tensor:

    B  block            T  token within a block     H  kv head
    D  head channel     2  K/V axis (K first)       L  layer (one tensor for all layers)
    C  channels packing K then V (2*D) when H is present; an MLA latent when not

Forms in use: "2BTHD" (older vLLM flash-attn), "B2THD" (flashinfer),
"BHTC" / "BTHC" (current vLLM, K|V packed; vLLM's CPU backend uses BHTC),
"BTD" or "BTC" (MLA latent), and cross-layer forms such as "LB2THD" or "BLTHC".
Strides are read from the tensors, never assumed.

Every chunk is stored in one engine-independent order, (layers, planes,
tokens, heads, head_dim), where planes is 2 (K, V) for attention and 1 for an
MLA latent (heads is then 1). A chunk stored from one layout or block size
loads into any other with the same geometry. Bytes move as same-width
integers, so every bit pattern (NaN payloads, fp8) survives exactly. The
geometry and the dtypes are described in geometry.py; this module maps an
engine's tensors onto them and moves blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

from . import _C, transfer
from .errors import BlockIdsError, InputError, LayoutError
from .geometry import _BY_NAME, _DTYPES, Geometry, _dtype_entry  # noqa: F401 - importable here too
from .keys import as_1d_array
from .transfer import block_contiguous

_AXES = set("LBTHD2C")


def _parse_dims(dims: str) -> tuple[bool, bool]:
    """Checks a dims string; returns (packed K|V in C, MLA latent)."""
    if not isinstance(dims, str) or not dims:
        raise LayoutError(f"dims must be a non-empty string such as 'BHTC', got {dims!r}")
    unknown = sorted(set(dims) - _AXES)
    if unknown:
        raise LayoutError(
            f"dims {dims!r} has unknown letters {''.join(unknown)!r}; use L B T H D 2 C "
            f"(e.g. '2BTHD', 'B2THD', 'BHTC', 'BTHC', 'BTD', 'LB2THD')"
        )
    repeated = sorted({c for c in dims if dims.count(c) > 1})
    if repeated:
        raise LayoutError(f"dims {dims!r} repeats {''.join(repeated)!r}")
    missing = [c for c in "BT" if c not in dims]
    if missing:
        raise LayoutError(f"dims {dims!r} lacks {''.join(missing)!r}: every layout has a block (B) and token (T) axis")
    s = set(dims) - {"L", "B", "T"}
    if s == {"2", "H", "D"}:
        return False, False
    if s == {"H", "C"}:
        return True, False
    if s in ({"D"}, {"C"}):
        return False, True
    raise LayoutError(
        f"dims {dims!r} is not a KV layout: besides B and T (and L) it needs '2HD' "
        f"(separate K/V axis), 'HC' (K|V packed in C) or a single 'D'/'C' (MLA latent)"
    )


def _canonical_view(x: torch.Tensor, dims: str, packed: bool, latent: bool, int_dtype: torch.dtype) -> torch.Tensor:
    """A view of x with axes ([L,] B, planes, T, H, D) over same-width integers."""
    x = x.view(int_dtype)
    letters = list(dims)
    if packed:
        i = letters.index("C")
        x = x.unflatten(i, (2, x.shape[i] // 2))
        letters[i : i + 1] = ["2", "D"]
    if latent:
        letters[letters.index("C" if "C" in letters else "D")] = "D"
        x = x.unsqueeze(-1).unsqueeze(-1)
        letters += ["2", "H"]  # planes = 1, heads = 1
    order = ("L" if "L" in letters else "") + "B2THD"
    return x.permute([letters.index(c) for c in order])


class PagedKV:
    """An engine's paged KV tensors plus the layout that names their axes.

    Args:
        tensors: one tensor per layer (list, tuple, or dict in layer order), or
            one tensor with an L axis.
        dims: the axes of a layer tensor (with L for a single tensor), e.g. "BHTC".
        plane_strides: for engines whose planes are not laid out alike (vLLM's
            CPU backend keeps K channel-major inside a block): per plane,
            (offset, token, head, channel) in elements from the start of a
            block. Host tensors only.

    Example:
        >>> caches = [torch.zeros(64, 8, 16, 256, dtype=torch.bfloat16) for _ in range(4)]
        >>> kv = PagedKV(caches, dims="BHTC")
        >>> kv.geometry
        Geometry(layers=4, heads=8, head_dim=128, dtype='bfloat16', planes=2)
    """

    def __init__(self, tensors: Union[torch.Tensor, Sequence[torch.Tensor], Mapping[Any, torch.Tensor]], dims: str,
                 plane_strides: Optional[Sequence[Sequence[int]]] = None) -> None:
        packed, latent = _parse_dims(dims)
        if not isinstance(tensors, (list, tuple, Mapping)):
            tensors = _from_dlpack(tensors)
        if isinstance(tensors, torch.Tensor):
            if "L" not in dims:
                raise LayoutError(
                    f"a single tensor needs an L (layer) axis in dims, got {dims!r}; "
                    f"pass a list or dict for one tensor per layer"
                )
            layer_list = [tensors]
        elif isinstance(tensors, Mapping):
            layer_list = list(tensors.values())
        elif isinstance(tensors, (list, tuple)):
            layer_list = list(tensors)
        else:
            raise LayoutError(f"tensors must be a tensor, a list/tuple or a dict of tensors, got {type(tensors).__name__}")
        if not layer_list:
            raise LayoutError("tensors is empty: pass one tensor per layer")
        # cupy and other DLPack producers: the same memory as a torch tensor
        layer_list = [_from_dlpack(t) for t in layer_list]
        if "L" in dims and not isinstance(tensors, torch.Tensor):
            raise LayoutError(f"dims {dims!r} has an L axis, so pass one tensor, not a {type(tensors).__name__}")
        first = layer_list[0]
        for i, t in enumerate(layer_list):
            if not isinstance(t, torch.Tensor):
                raise LayoutError(f"layer {i} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() != len(dims):
                raise LayoutError(f"layer {i} has {t.dim()} axes {tuple(t.shape)} but dims {dims!r} names {len(dims)}")
            if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
                raise LayoutError(
                    f"layer {i} is {tuple(t.shape)} {t.dtype} on {t.device}, layer 0 is "
                    f"{tuple(first.shape)} {first.dtype} on {first.device}: all layers must match"
                )
        dtype, (_, _, int_dtype) = _dtype_entry(first.dtype)
        size = dict(zip(dims, first.shape))
        if packed and size["C"] % 2:
            raise LayoutError(f"axis C packs K then V, so its size must be even, got {size['C']}")
        if any(n == 0 for n in first.shape):
            raise LayoutError(f"tensors have an empty axis: {tuple(first.shape)}")
        views = [_canonical_view(t, dims, packed, latent, int_dtype) for t in layer_list]
        if "L" in dims:
            views = list(views[0].unbind(0))  # per-layer views of the one tensor
        self.dims = dims
        self.tensors = layer_list if "L" not in dims else tensors
        self.num_blocks = size["B"]
        self.block_size = size["T"]
        self.device = first.device
        v = views[0]
        self.geometry = Geometry(layers=len(views), heads=v.shape[3], head_dim=v.shape[4], dtype=dtype, planes=v.shape[1])
        self._views = views  # each (B, planes, T, H, D) over integers
        # Host tensors move through the native block copier (memcpy over the
        # longest contiguous runs); it needs one stride set for all layers.
        # Device tensors whose blocks are contiguous runs move by DMA (transfer.py).
        self._native = None
        self._dma = None
        same_strides = all(w.stride() == v.stride() for w in views)
        planes = _check_plane_strides(plane_strides, v, self.device, same_strides)
        if same_strides and (self.device.type == "cpu" or block_contiguous(v)):
            layout = _C.PagedLayout([w.data_ptr() for w in views], list(v.stride()),
                                    [v.shape[1], v.shape[2], v.shape[3], v.shape[4]], v.element_size(), planes or [])
            if self.device.type == "cpu":
                self._native = layout
            elif (engine := transfer.copy_engine(self.device)) is not None:  # pragma: gpu
                self._dma = (engine, layout)

    @property
    def host_layout(self) -> Optional["_C.PagedLayout"]:
        """The native description of host blocks, for copies on the I/O threads (None otherwise)."""
        return self._native

    def __repr__(self) -> str:
        g = self.geometry
        return (f"PagedKV(dims={self.dims!r}, layers={g.layers}, blocks={self.num_blocks}, "
                f"block_size={self.block_size}, heads={g.heads}, head_dim={g.head_dim}, "
                f"dtype={g.dtype}, device={self.device})")

    def block_ids(self, block_ids: Any, needed: int, distinct: bool = False) -> torch.Tensor:
        """Checks engine block ids (at least `needed`, all in range) -> int64 tensor on the KV device.

        distinct: the first `needed` ids must not repeat (a load writes them: two
        chunks in one block would leave the engine holding only the last).
        """
        arr = as_1d_array(block_ids, "block_ids", BlockIdsError)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise BlockIdsError(f"block_ids must be integers, got dtype {arr.dtype}")
        if arr.size < needed:
            raise BlockIdsError(
                f"too few block ids: {arr.size} given, {needed} needed for the tokens "
                f"(block size {self.block_size})"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_blocks):
            raise BlockIdsError(
                f"block ids must lie in [0, {self.num_blocks}), got values from {arr.min()} to {arr.max()}"
            )
        used = arr[:needed]
        if distinct and used.size > 1 and np.unique(used).size != used.size:
            vals, counts = np.unique(used, return_counts=True)
            raise BlockIdsError(f"block ids repeat among the {needed} used for the tokens: block "
                                f"{int(vals[counts > 1][0])} appears {int(counts.max())} times (a load cannot "
                                f"write two places into one engine block)")
        # DMA computes addresses on the host; the kernels read ids on the device
        on_host = self._native is not None or self._dma is not None
        return torch.as_tensor(arr.astype(np.int64), device="cpu" if on_host else self.device)

    def gather(self, ids: torch.Tensor, out: torch.Tensor, max_threads: int = 0) -> None:
        """Copies whole blocks `ids` into `out`, a contiguous canonical chunk on the host.

        max_threads caps the host copy's threads (0: automatic).
        """
        _check_chunk(out, self.geometry, len(ids) * self.block_size)
        if self._native is not None:
            _C.gather_blocks(self._native, ids.data_ptr(), len(ids), out.data_ptr(), max_threads)
            transfer.count_copy("gather", "native")
        elif self._dma is not None:
            transfer.gather(*self._dma, ids, out, self.device)  # pragma: gpu
        elif self.device.type != "cpu":
            _device_gather(self._views, ids, out)  # pragma: gpu
        else:
            _gather_blocks(self._views, ids, out)
            transfer.count_copy("gather", "torch_host")

    def scatter(self, ids: torch.Tensor, src: torch.Tensor, skip: int = 0, max_threads: int = 0,
                pending: Optional[list] = None) -> None:
        """Writes chunk tokens [skip, T) from `src` (canonical, host) into blocks `ids`.

        With `pending`, a device copy may still be running on return: (ticket,
        src) is appended, and the caller keeps src alive until ticket.wait().
        """
        _check_chunk(src, self.geometry, len(ids) * self.block_size)
        if self._native is not None:
            _C.scatter_blocks(self._native, ids.data_ptr(), len(ids), src.data_ptr(), skip, max_threads)
            transfer.count_copy("scatter", "native")
        elif self._dma is not None:
            ticket = transfer.scatter(*self._dma, ids, src, skip, self.device)  # pragma: gpu
            if pending is None:  # pragma: gpu
                ticket.wait()
            else:
                pending.append((ticket, src))
        elif self.device.type != "cpu":
            _device_scatter(self._views, ids, src, skip)  # pragma: gpu
        else:
            _scatter_blocks(self._views, ids, src, skip)
            transfer.count_copy("scatter", "torch_host")


def _check_plane_strides(given: Any, v: torch.Tensor, device: torch.device,
                         same_strides: bool) -> Optional[list[tuple[int, int, int, int]]]:
    """Per-plane (offset, token, head, channel) strides, checked to stay inside one block."""
    if given is None:
        return None
    if device.type != "cpu" or not same_strides:
        raise LayoutError("plane_strides needs host tensors with the same strides in every layer")
    _, planes, t, h, d = v.shape
    try:
        rows = [tuple(int(x) for x in row) for row in given]
    except (TypeError, ValueError):
        raise LayoutError(f"plane_strides must be {planes} rows of 4 integers, got {given!r}") from None
    if len(rows) != planes or any(len(r) != 4 for r in rows):
        raise LayoutError(f"plane_strides must be {planes} rows of (offset, token, head, channel), got {given!r}")
    block = v.stride(0)
    for p, (off, st, sh, sd) in enumerate(rows):
        lo = off + min(0, (t - 1) * st) + min(0, (h - 1) * sh) + min(0, (d - 1) * sd)
        hi = off + max(0, (t - 1) * st) + max(0, (h - 1) * sh) + max(0, (d - 1) * sd)
        if lo < 0 or hi >= block:
            raise LayoutError(f"plane {p}'s strides {rows[p]} reach outside a block of {block} elements")
    return rows


def _from_dlpack(t: Any) -> Any:
    """A torch view of a DLPack tensor (cupy, jax, ...); anything else as given."""
    if isinstance(t, (torch.Tensor, np.ndarray)) or not hasattr(t, "__dlpack__"):
        return t  # numpy is refused by name below: engines hand over device tensors
    return torch.from_dlpack(t)


def _check_chunk(t: torch.Tensor, g: Geometry, tokens: int) -> None:
    # The native copier trusts these: a wrong buffer would be written past its end.
    if t.device.type != "cpu" or not t.is_contiguous() or t.dtype != g.view_dtype or tuple(t.shape) != g.chunk_shape(tokens):
        raise InputError(f"chunk buffer must be a contiguous host tensor {g.chunk_shape(tokens)} of {g.view_dtype}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def _gather_blocks(views: list[torch.Tensor], ids: torch.Tensor, out: torch.Tensor) -> None:
    # One pass per (layer, plane): index_select writes straight into the chunk.
    _, planes, bs, heads, hd = views[0].shape
    o = out.view(len(views), planes, len(ids), bs, heads, hd)
    for layer, v in enumerate(views):
        for p in range(planes):
            torch.index_select(v[:, p], 0, ids, out=o[layer, p])


def _scatter_blocks(views: list[torch.Tensor], ids: torch.Tensor, src: torch.Tensor, skip: int) -> None:
    _, planes, bs, heads, hd = views[0].shape
    s = src.view(len(views), planes, len(ids), bs, heads, hd)
    first_full = -(-skip // bs)
    partial = skip // bs if skip % bs else None
    full = ids[first_full:]
    for layer, v in enumerate(views):
        for p in range(planes):
            if len(full):
                v[:, p].index_copy_(0, full, s[layer, p, first_full:])
            if partial is not None:
                v[ids[partial], p, skip % bs :].copy_(s[layer, p, partial, skip % bs :])


def _device_gather(views: list[torch.Tensor], ids: torch.Tensor, out: torch.Tensor) -> None:
    """Gather from device-resident KV into a host chunk: one Triton launch into device
    staging, then one copy to the host. Torch indexing where Triton cannot run
    (no triton, or layers with different strides); the bytes are the same."""
    staging = torch.empty(out.shape, dtype=out.dtype, device=views[0].device)
    kernels = _kernels()
    try:
        if kernels is None:
            raise ValueError("no triton")
        kernels.gather(views, ids, staging, len(ids))
        transfer.count_copy("gather", "kernels")
    except ValueError:
        _gather_blocks(views, ids, staging)
        transfer.count_copy("gather", "torch")
    out.copy_(staging)


def _device_scatter(views: list[torch.Tensor], ids: torch.Tensor, src: torch.Tensor, skip: int) -> None:
    """Scatter a host chunk into device-resident KV (see `_device_gather`)."""
    staged = src.to(views[0].device, non_blocking=False)
    kernels = _kernels()
    try:
        if kernels is None:
            raise ValueError("no triton")
        kernels.scatter(views, ids, staged, len(ids), skip)
        transfer.count_copy("scatter", "kernels")
    except ValueError:
        _scatter_blocks(views, ids, staged, skip)
        transfer.count_copy("scatter", "torch")


def _kernels():
    """pykvstore.kernels, or None where triton is not installed."""
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels
