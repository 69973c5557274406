"""gather/scatter: every layer, plane and token of a list of chunks in one launch.

The engine side is described by the canonical per-layer views of
pykvstore.layout (axes block, plane, token, head, channel, over same-width
integers): one stride set shared by all layers, and each layer's offset in
elements from the first layer's storage. That covers one tensor per layer and
one tensor with a layer axis, any layout (2BTHD, B2THD, BHTC, BTHC, MLA) and
any strides. The staging side is chunks in the canonical order, contiguous:
(chunks, layers, planes, tokens, heads, head_dim).

One program moves one token's row (heads x head_dim) of one (layer, plane):
a contiguous run on the staging side, and on the engine side whenever the
row is contiguous there too (flagged at compile time, so loads and stores
vectorise). Offsets are int64 throughout: engine tensors pass 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_TILE = 1024  # row elements per step (a 576-wide MLA row takes one step of 1024)


@triton.jit
def _paged_copy_kernel(
    engine_ptr, staging_ptr, layer_off_ptr, block_ids_ptr,
    stride_b, stride_p, stride_t, stride_h, stride_d,
    skip,
    TO_STAGING: tl.constexpr, PLANES: tl.constexpr, LAYERS: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    ROW_CONTIGUOUS: tl.constexpr, TILE: tl.constexpr, ALIGN: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)  # global token over all chunks of the launch
    lp = tl.program_id(1)  # layer * PLANES + plane
    if TO_STAGING or tok >= skip:
        layer = lp // PLANES
        plane = lp % PLANES
        blk = tok // BLOCK_SIZE
        slot = tok % BLOCK_SIZE
        chunk = blk // BLOCKS_PER_CHUNK
        tok_in_chunk = tok - chunk * (BLOCKS_PER_CHUNK * BLOCK_SIZE)
        engine_block = tl.load(block_ids_ptr + blk)
        ROW: tl.constexpr = HEADS * HEAD_DIM
        engine_row = (tl.load(layer_off_ptr + layer) + engine_block * stride_b + plane * stride_p
                      + slot * stride_t)
        staging_row = (((chunk * LAYERS + layer) * PLANES + plane) * (BLOCKS_PER_CHUNK * BLOCK_SIZE)
                       + tok_in_chunk) * ROW
        if ALIGN > 1:  # proven on the host: both rows start on 16-byte boundaries
            engine_row = tl.multiple_of(engine_row, ALIGN)
            staging_row = tl.multiple_of(staging_row, ALIGN)
        for r0 in tl.static_range(0, ROW, TILE):
            idx = r0 + tl.arange(0, TILE)
            mask = idx < ROW
            if ROW_CONTIGUOUS:
                e_off = engine_row + idx
            else:
                e_off = engine_row + (idx // HEAD_DIM) * stride_h + (idx % HEAD_DIM) * stride_d
            if TO_STAGING:
                v = tl.load(engine_ptr + e_off, mask=mask)
                tl.store(staging_ptr + staging_row + idx, v, mask=mask)
            else:
                v = tl.load(staging_ptr + staging_row + idx, mask=mask)
                tl.store(engine_ptr + e_off, v, mask=mask)


def _plan(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int):
    """Checks the arguments; returns the launch's engine base, layer offsets and constants."""
    v0 = views[0]
    if any(v.stride() != v0.stride() or v.dtype != v0.dtype or v.shape[1:] != v0.shape[1:] for v in views):
        raise ValueError("all layers must share shape, dtype and strides for the Triton path")
    if v0.dim() != 5:
        raise ValueError("views must be (block, plane, token, head, channel)")
    if block_ids.dtype != torch.int64 or block_ids.dim() != 1 or block_ids.device != v0.device:
        raise ValueError("block_ids must be a 1-D int64 tensor on the KV device")
    if len(block_ids) % blocks_per_chunk:
        raise ValueError("block_ids must hold whole chunks")
    _, planes, bs, heads, hd = v0.shape
    n_chunks = len(block_ids) // blocks_per_chunk
    want = (n_chunks, len(views), planes, blocks_per_chunk * bs, heads, hd)
    if staging.device != v0.device or staging.dtype != v0.dtype or not staging.is_contiguous() \
            or staging.numel() != torch.Size(want).numel():
        raise ValueError(f"staging must be a contiguous {v0.dtype} tensor of {want} on {v0.device}")
    item = v0.element_size()
    storage = v0.untyped_storage()
    base = torch.empty(0, dtype=v0.dtype, device=v0.device).set_(storage, 0, (storage.nbytes() // item,), (1,))
    offsets = []
    for v in views:
        delta = v.data_ptr() - storage.data_ptr()
        if delta % item:
            raise ValueError("layer tensors must be aligned to their element size")
        offsets.append(delta // item)
    layer_off = torch.tensor(offsets, dtype=torch.int64, device=v0.device)
    sb, sp, st, sh, sd = v0.stride()
    row_contig = sd == 1 and (heads == 1 or sh == hd)
    tile = min(MAX_TILE, triton.next_power_of_2(heads * hd))
    # 16-byte accesses only where every row start is 16-byte aligned on both sides.
    vec = max(1, 16 // item)
    aligned = (row_contig and base.data_ptr() % 16 == 0 and staging.data_ptr() % 16 == 0
               and all(x % vec == 0 for x in (*offsets, sb, sp, st, heads * hd)))
    consts = dict(PLANES=planes, LAYERS=len(views), BLOCKS_PER_CHUNK=blocks_per_chunk, BLOCK_SIZE=bs,
                  HEADS=heads, HEAD_DIM=hd, ROW_CONTIGUOUS=row_contig, TILE=tile, ALIGN=vec if aligned else 1)
    grid = (len(block_ids) * bs, len(views) * planes)
    return base, layer_off, (sb, sp, st, sh, sd), consts, grid


def gather(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int) -> None:
    """Copies whole blocks into `staging` (chunks, layers, planes, tokens, heads, head_dim) in one launch."""
    base, layer_off, strides, consts, grid = _plan(views, block_ids, staging, blocks_per_chunk)
    _paged_copy_kernel[grid](base, staging, layer_off, block_ids, *strides, 0, TO_STAGING=True, **consts)


def scatter(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
            skip: int = 0) -> None:
    """Writes staged tokens back into the blocks; tokens before `skip` (counted over the launch) stay as they are."""
    base, layer_off, strides, consts, grid = _plan(views, block_ids, staging, blocks_per_chunk)
    _paged_copy_kernel[grid](base, staging, layer_off, block_ids, *strides, skip, TO_STAGING=False, **consts)
