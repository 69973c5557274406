"""gather/scatter: every layer, plane and token of a list of chunks in one launch.

The engine side is described by the canonical per-layer views of
pykvstore.layout (axes block, plane, token, head, channel, over same-width
integers): one stride set shared by all layers, and each layer's offset in
elements from the first layer's storage. That covers one tensor per layer and
one tensor with a layer axis, any layout (2BTHD, B2THD, BHTC, BTHC, MLA) and
any strides. The staging side is chunks in the canonical order, contiguous:
(chunks, layers, planes, tokens, heads, head_dim).

One program moves ROWS token rows (heads x head_dim each) of one (layer,
plane). A row is a contiguous run on the staging side; on the engine side it
is one run (2BTHD, B2THD, BTHC) or one run per head (BHTC, vLLM's head-major
layout). Where `_plan` proves every run starts on a 16-byte boundary it says
so at compile time (ALIGN), and loads and stores become 16-byte vectors.

Why ROWS rows and not one: a program that moves one 2 KiB row issues its
loads once and exits, so an SM holds at most 16 such programs x one row of
loads in flight, and a row of one head (256 B, a tensor-parallel shard) gives
4 KiB per SM where HBM3e needs about 18 KiB (benchmarks/README.md works the
numbers and tests/test_kernels_aot.py checks them on the compiled code). ROWS
makes each program's step move 16 KiB (8 vectors a thread), all loads issued
before the first store. Offsets are int64 throughout: engine tensors pass 2**31 elements.
The host thread that calls gather/scatter launches on torch's current stream.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

MAX_TILE = 1024  # row elements per step (a 576-wide MLA row takes one step of 1024)
NUM_WARPS = 4  # 128 threads per program
# Accesses one thread holds per step, each with its own 64-bit address: 8
# 16-byte vectors (a 16 KiB step) where alignment is proven, else 16 elements
# (more spill registers: ptxas spills at 64 elements on sm_90).
VECTORS_PER_THREAD = 8
ELEMENTS_PER_THREAD_UNALIGNED = 16
MAX_ROWS = 128  # rows of at least 128 B fill a step; smaller rows give smaller steps


@triton.jit
def _paged_copy_kernel(
    engine_ptr, staging_ptr, layer_off_ptr, block_ids_ptr,
    stride_b, stride_p, stride_t, stride_h, stride_d,
    tokens, skip,
    TO_STAGING: tl.constexpr, PLANES: tl.constexpr, LAYERS: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    ROW_CONTIGUOUS: tl.constexpr, HEAD_CONTIGUOUS: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    lp = tl.program_id(1)  # layer * PLANES + plane
    layer = (lp // PLANES).to(tl.int64)
    plane = (lp % PLANES).to(tl.int64)
    tok = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)  # global tokens of the launch
    live = tok < tokens
    if not TO_STAGING:
        live = live & (tok >= skip)
    blk = tok // BLOCK_SIZE
    slot = tok % BLOCK_SIZE
    chunk = blk // BLOCKS_PER_CHUNK
    tok_in_chunk = tok - chunk * (BLOCKS_PER_CHUNK * BLOCK_SIZE)
    engine_block = tl.load(block_ids_ptr + blk, mask=live, other=0)
    ROW: tl.constexpr = HEADS * HEAD_DIM
    engine_row = (tl.load(layer_off_ptr + layer) + engine_block * stride_b + plane * stride_p
                  + slot * stride_t)
    staging_row = (((chunk * LAYERS + layer) * PLANES + plane) * (BLOCKS_PER_CHUNK * BLOCK_SIZE)
                   + tok_in_chunk) * ROW
    head_stride = stride_h  # products below are int64: (head index as int64) * stride
    if ALIGN > 1:  # proven on the host: every run starts on a 16-byte boundary on both sides
        engine_row = tl.multiple_of(engine_row, ALIGN)
        staging_row = tl.multiple_of(staging_row, ALIGN)
        if not ROW_CONTIGUOUS:
            head_stride = tl.multiple_of(head_stride, ALIGN)
    engine_row = engine_row[:, None]
    staging_row = staging_row[:, None]
    for r0 in tl.static_range(0, ROW, TILE):
        idx = r0 + tl.arange(0, TILE)
        mask = live[:, None] & (idx < ROW)[None, :]
        if ROW_CONTIGUOUS:
            e_off = engine_row + idx[None, :]
        elif HEAD_CONTIGUOUS:
            e_off = engine_row + ((idx // HEAD_DIM).to(tl.int64) * head_stride + idx % HEAD_DIM)[None, :]
        else:
            e_off = engine_row + ((idx // HEAD_DIM).to(tl.int64) * head_stride
                                  + (idx % HEAD_DIM).to(tl.int64) * stride_d)[None, :]
        s_off = staging_row + idx[None, :]
        if TO_STAGING:
            v = tl.load(engine_ptr + e_off, mask=mask)
            tl.store(staging_ptr + s_off, v, mask=mask)
        else:
            v = tl.load(staging_ptr + s_off, mask=mask)
            tl.store(engine_ptr + e_off, v, mask=mask)


def _plan(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
          rows: Optional[int] = None):
    """Checks the arguments; returns the launch's engine base, layer offsets, strides, constants and grid.

    `rows` overrides ROWS (a power of two; benchmarks compare one row per program).
    """
    v0 = views[0]
    if any(v.stride() != v0.stride() or v.dtype != v0.dtype or v.shape[1:] != v0.shape[1:] for v in views):
        raise ValueError("all layers must share shape, dtype and strides for the Triton path")
    if v0.dim() != 5:
        raise ValueError("views must be (block, plane, token, head, channel)")
    if block_ids.dtype != torch.int64 or block_ids.dim() != 1 or block_ids.device != v0.device:
        raise ValueError("block_ids must be a 1-D int64 tensor on the KV device")
    if len(block_ids) % blocks_per_chunk:
        raise ValueError("block_ids must hold whole chunks")
    if rows is not None and (rows < 1 or rows & (rows - 1)):
        raise ValueError(f"rows must be a power of two, got {rows}")
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
    head_contig = sd == 1 and not row_contig
    tile = min(MAX_TILE, triton.next_power_of_2(heads * hd))
    # 16-byte accesses only where every contiguous run (a row, or a head's channels)
    # starts on a 16-byte boundary on both sides.
    # A stride along an axis of size 1 is never multiplied by more than 0.
    vec = max(1, 16 // item)
    run = heads * hd if row_contig else hd
    used = [sb] + ([sp] if planes > 1 else []) + ([st] if bs > 1 else []) + ([] if row_contig else [sh])
    aligned = (sd == 1 and base.data_ptr() % 16 == 0 and staging.data_ptr() % 16 == 0
               and all(x % vec == 0 for x in (*offsets, *used, run, heads * hd)))
    per_thread = VECTORS_PER_THREAD * vec if aligned else ELEMENTS_PER_THREAD_UNALIGNED
    n_rows = rows or max(1, min(MAX_ROWS, per_thread * NUM_WARPS * 32 // tile))
    consts = dict(PLANES=planes, LAYERS=len(views), BLOCKS_PER_CHUNK=blocks_per_chunk, BLOCK_SIZE=bs,
                  HEADS=heads, HEAD_DIM=hd, ROW_CONTIGUOUS=row_contig, HEAD_CONTIGUOUS=head_contig,
                  ROWS=n_rows, TILE=tile, ALIGN=vec if aligned else 1)
    tokens = len(block_ids) * bs
    grid = (triton.cdiv(tokens, n_rows), len(views) * planes)
    return base, layer_off, (sb, sp, st, sh, sd, tokens), consts, grid


def gather(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
           *, rows: Optional[int] = None) -> None:
    """Copies whole blocks into `staging` (chunks, layers, planes, tokens, heads, head_dim) in one launch."""
    base, layer_off, args, consts, grid = _plan(views, block_ids, staging, blocks_per_chunk, rows)
    _paged_copy_kernel[grid](base, staging, layer_off, block_ids, *args, 0, TO_STAGING=True, num_warps=NUM_WARPS,
                             **consts)


def scatter(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
            skip: int = 0, *, rows: Optional[int] = None) -> None:
    """Writes staged tokens back into the blocks; tokens before `skip` (counted over the launch) stay as they are."""
    base, layer_off, args, consts, grid = _plan(views, block_ids, staging, blocks_per_chunk, rows)
    _paged_copy_kernel[grid](base, staging, layer_off, block_ids, *args, skip, TO_STAGING=False, num_warps=NUM_WARPS,
                             **consts)
