"""SGLang HiCache host pools as pykvstore PagedKV, and page keys as chunk "tokens".

Runs wherever SGLang's storage backend runs (its prefetch and backup
threads); nothing here imports SGLang, so it is tested with any tensor of
the right shape as well as with SGLang's own host pools.

Host layouts (sglang 0.5.23, `mem_cache/pool_host/mha.py` and `mla.py`),
`size` = pages * page_size tokens:

    MHA layer_first        kv_buffer (2, L, size, H, D)          dims "2LBTHD"
    MHA page_first         kv_buffer (2, size, L, H, D)          dims "2BTLHD"
    MHA page_first_direct  kv_buffer (2, pages, L, P, H, D)      dims "2BLTHD"
    MHA page_head          kv_buffer (2, pages, H, P, L, D)      dims "2BHTLD"
    MLA layer_first        kv_buffer (L, size, 1, C)             dims "LBTD"
    MLA page_first         kv_buffer (size, L, 1, C)             dims "BTLD"
    MLA page_first_direct  kv_buffer (pages, L, P, 1, C)         dims "BLTD"

Every one is a view with a block (page) axis, so the native copier moves
pages between the pool and canonical chunk files without a Python loop over
pages, and a page stored from one layout loads into any other (the chunk
order is layout-independent). `page_unified` (head groups interleaved inside
a fused block) is not supported: the backend refuses it at registration.

Keys: a storage backend is handed SGLang's page hashes, never token ids, so a
page's chunk "tokens" are its hash: the 32 bytes of SGLang's hex SHA-256
(any other key string is hashed with SHA-256 first), as little-endian uint32
words, zero-padded to the page size (pages of 4 to 7 tokens keep the first 16
to 28 bytes). The chunk key is then pykvstore's
usual H(namespace || tokens), so the namespace (model, geometry, TP shard,
page size, salt) separates what SGLang's hash does not cover.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError, LayoutError
from ..keys import TOKEN_DTYPE
from ..layout import PagedKV

MIN_PAGE_SIZE = 4  # 4 words = 128 bits of the page hash in the chunk tokens
_KEY_DOMAIN = b"pykvstore-sglang-page\0"

# layout -> dims of the paged view of kv_buffer
_MHA = {
    "layer_first": "2LBTHD",
    "page_first": "2BTLHD",
    "page_first_direct": "2BLTHD",
    "page_head": "2BHTLD",
}
_MLA = {
    "layer_first": "LBTD",
    "page_first": "BTLD",
    "page_first_direct": "BLTD",
}
SUPPORTED_LAYOUTS = tuple(_MHA)


@dataclass(frozen=True)
class HostPoolView:
    """A host pool seen as pages: the PagedKV over its buffer, its dims and the
    shape of one page (block axis of length 1) as `get_data_page(flat=True)` orders it."""

    kv: PagedKV
    dims: str
    page_shape: tuple[int, ...]
    page_size: int
    layout: str
    mla: bool

    def page_kv(self, flat_page: torch.Tensor) -> PagedKV:
        """One flat page (SGLang's generic get/set path) as a one-block PagedKV."""
        n = int(np.prod(self.page_shape))
        if not isinstance(flat_page, torch.Tensor) or flat_page.numel() != n or flat_page.device.type != "cpu":
            raise InputError(f"a page must be a host tensor of {n} elements, got "
                             f"{getattr(flat_page, 'shape', type(flat_page).__name__)}")
        page = flat_page.reshape(self.page_shape)
        if page.data_ptr() != flat_page.data_ptr():
            raise InputError("a page must be contiguous")
        return PagedKV(page, dims=self.dims)


def host_pool_view(pool: Any) -> HostPoolView:
    """The PagedKV of an SGLang host pool (MHATokenToKVPoolHost or MLATokenToKVPoolHost).

    Reads `layout`, `page_size` and `kv_buffer` (SGLang's attribute names);
    raises LayoutError naming the problem for a layout or pool it cannot express.
    """
    layout = getattr(pool, "layout", None)
    page_size = getattr(pool, "page_size", None)
    buf = getattr(pool, "kv_buffer", None)
    if not isinstance(buf, torch.Tensor) or not isinstance(page_size, int) or page_size <= 0:
        raise LayoutError(f"{type(pool).__name__} has no kv_buffer tensor and page size pykvstore can read")
    if buf.device.type != "cpu" or not buf.is_contiguous():
        raise LayoutError(f"the host pool's kv_buffer must be a contiguous host tensor, got {buf.device}")
    mla = hasattr(pool, "kv_cache_dim") and not hasattr(pool, "head_num")  # MLATokenToKVPoolHost
    table = _MLA if mla else _MHA
    if layout not in table:
        kind = "MLA" if mla else "MHA"
        raise LayoutError(f"host layout {layout!r} of an {kind} pool is not supported; supported: {', '.join(table)}")
    s = buf.shape
    if mla:
        if layout == "layer_first":  # (L, size, 1, C)
            view = buf.view(s[0], s[1] // page_size, page_size, s[3])
        elif layout == "page_first":  # (size, L, 1, C)
            view = buf.view(s[0] // page_size, page_size, s[1], s[3])
        else:  # (pages, L, P, 1, C)
            view = buf.view(s[0], s[1], s[2], s[4])
    elif layout == "layer_first":  # (2, L, size, H, D)
        view = buf.view(2, s[1], s[2] // page_size, page_size, s[3], s[4])
    elif layout == "page_first":  # (2, size, L, H, D)
        view = buf.view(2, s[1] // page_size, page_size, s[2], s[3], s[4])
    else:  # (2, pages, ., ., ., D): already paged
        view = buf
    dims = table[layout]
    if view.shape[dims.index("T")] != page_size:
        raise LayoutError(f"the {layout} pool's page axis is {view.shape[dims.index('T')]}, not page_size {page_size}")
    page_shape = tuple(1 if c == "B" else n for c, n in zip(dims, view.shape))
    return HostPoolView(PagedKV(view, dims=dims), dims, page_shape, page_size, layout, mla)


def page_token_bytes(key: str, page_size: int, width: int = 0, pad: Optional[bytes] = None) -> bytes:
    """The bytes of the chunk "tokens" standing for an SGLang page key (see the module docstring).

    SGLang's page keys are SHA-256 digests in hex: their 32 bytes are used as they are;
    any other string is hashed first.
    """
    if not isinstance(key, str):
        raise InputError(f"an SGLang page key must be a string, got {type(key).__name__}")
    if len(key) == 64:
        try:
            digest = bytes.fromhex(key)
        except ValueError:
            digest = hashlib.sha256(_KEY_DOMAIN + key.encode()).digest()
    else:
        digest = hashlib.sha256(_KEY_DOMAIN + key.encode()).digest()
    if pad is None:
        width = TOKEN_DTYPE.itemsize * page_size
        pad = bytes(max(0, width - len(digest)))
    return digest[:width] + pad


class PageKeys:
    """Chunk keys of SGLang page keys, in bulk: H(root || page_token_bytes(key)), the store's
    own key of a one-chunk token sequence (the backend checks that once, at registration)."""

    def __init__(self, root: bytes, hasher: Any, page_size: int) -> None:
        self._root, self._new = root, hasher
        self._width = TOKEN_DTYPE.itemsize * page_size
        self._pad = bytes(max(0, self._width - 32))

    def raw(self, key: str) -> bytes:
        return page_token_bytes(key, 0, self._width, self._pad)

    def key(self, raw: bytes) -> str:
        h = self._new(self._root)
        h.update(raw)
        return h.hexdigest()

    def __call__(self, keys: list[str]) -> tuple[list[bytes], list[str]]:
        raw = [self.raw(k) for k in keys]
        return raw, [self.key(r) for r in raw]


def page_tokens(key: str, page_size: int) -> np.ndarray:
    """The chunk "tokens" standing for an SGLang page key, as the store takes them."""
    return np.frombuffer(page_token_bytes(key, page_size), dtype=TOKEN_DTYPE)


def page_block_ids(host_indices: Any, pages: int, page_size: int, num_blocks: int) -> Optional[np.ndarray]:
    """Page (block) ids of `pages` whole pages from SGLang's token-level host indices.

    None when they are not whole, aligned pages of the pool (then nothing is read or written).
    """
    if not isinstance(host_indices, torch.Tensor):
        host_indices = torch.as_tensor(host_indices)
    idx = host_indices.detach().to("cpu", torch.int64).reshape(-1)
    if idx.numel() != pages * page_size:
        return None
    if pages == 0:
        return np.empty(0, dtype=np.int64)
    grid = idx.view(pages, page_size)
    first = grid[:, 0]
    if bool((first % page_size != 0).any()) or bool((first < 0).any()) or bool((first // page_size >= num_blocks).any()):
        return None
    if page_size > 1 and not torch.equal(grid - first[:, None], torch.arange(page_size).expand(pages, page_size)):
        return None
    return (first // page_size).numpy()
