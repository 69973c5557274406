"""The Triton gather/scatter kernels, bit-exact against the torch path.

Without a GPU they run under TRITON_INTERPRET=1 on small shapes; with one,
compiled on CUDA tensors at larger sizes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
triton = pytest.importorskip("triton")

import pykvstore as kv  # noqa: E402
from helpers import block_table, make_cache, reference, tokens  # noqa: E402
from pykvstore.kernels import gather, scatter  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD", "BLTHC"]


def on_device(cache):
    return cache.to(DEVICE) if isinstance(cache, torch.Tensor) else [t.to(DEVICE) for t in cache]


def staged_reference(cache, dims, ids, bs, chunks):
    """(chunks, layers, planes, tokens, heads, head_dim) by plain per-token indexing on the host."""
    per = len(ids) // chunks
    return torch.stack([reference(cache, dims, ids[c * per:(c + 1) * per], bs, 0, per * bs) for c in range(chunks)])


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_gather_every_layout(dims, noncontiguous):
    host = make_cache(dims, noncontiguous=noncontiguous, blocks=16, bs=4)
    p = kv.PagedKV(on_device(host), dims)
    ids = block_table(8, 16)
    staging = torch.empty((2,) + p.geometry.chunk_shape(16), dtype=p.geometry.view_dtype, device=DEVICE)
    gather(p._views, p.block_ids(ids, 8), staging, 4)
    assert torch.equal(staging.cpu(), staged_reference(host, dims, ids, 4, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("hd", [80, 96, 576])
def test_dtypes_and_head_dims_that_are_not_powers_of_two(dtype, hd):
    dims = "BTD" if hd == 576 else "BHTC"
    host = make_cache(dims, dtype=dtype, hd=hd, blocks=6, bs=2, layers=2)
    p = kv.PagedKV(on_device(host), dims)
    ids = block_table(4, 6)
    staging = torch.empty((1,) + p.geometry.chunk_shape(8), dtype=p.geometry.view_dtype, device=DEVICE)
    gather(p._views, p.block_ids(ids, 4), staging, 4)
    assert torch.equal(staging.cpu(), staged_reference(host, dims, ids, 2, 1))


@pytest.mark.parametrize("bs", [1, 3, 16])
@pytest.mark.parametrize("skip", [0, 5, 16, 23])
def test_scatter_from_skip_and_the_identity(bs, skip):
    dims = "B2THD"
    src_host = make_cache(dims, blocks=64, bs=bs, seed=1)
    dst_host = make_cache(dims, blocks=64, bs=bs, seed=2, noncontiguous=True)
    src, dst = kv.PagedKV(on_device(src_host), dims), kv.PagedKV(on_device(dst_host), dims)
    n = 48 // bs
    chunks = 2 if n % 2 == 0 else 3
    per = n // chunks  # blocks per chunk
    a, b = block_table(n, 64, 1), block_table(n, 64, 2)
    staging = torch.empty((chunks,) + src.geometry.chunk_shape(per * bs), dtype=src.geometry.view_dtype, device=DEVICE)
    gather(src._views, src.block_ids(a, n), staging, per)
    before = [t.clone() for t in dst.tensors]
    scatter(dst._views, dst.block_ids(b, n), staging, per, skip)
    after = [t.cpu() for t in dst.tensors]
    assert torch.equal(reference(after, dims, b, bs, skip, 48), reference(src_host, dims, a, bs, skip, 48))
    if skip:
        assert torch.equal(reference(after, dims, b, bs, 0, skip), reference([t.cpu() for t in before], dims, b, bs, 0, skip))
    again = torch.empty_like(staging)  # gather what was scattered: the same bytes from skip on
    gather(dst._views, dst.block_ids(b, n), again, per)
    for c in range(chunks):
        lo = max(0, skip - per * bs * c)
        assert torch.equal(again.cpu()[c, :, :, lo:], staging.cpu()[c, :, :, lo:])


def copies_since(before):
    from pykvstore.transfer import copy_counts

    return {k: v - before[k] for k, v in copy_counts().items() if v != before[k]}


def test_the_store_routes_device_tensors_through_the_kernels(bucket):
    """Device tensors take _device_gather/_device_scatter, and there the kernels, not the
    torch fallback (which moves the same bytes): counted per path. On CPU we drive them
    directly; on a GPU the store does, for a layout DMA cannot take (head-major BHTC)."""
    from pykvstore import layout
    from pykvstore.transfer import copy_counts

    host = make_cache("BHTC", blocks=16, bs=8)
    p = kv.PagedKV(on_device(host), "BHTC")
    ids = p.block_ids(block_table(4, 16), 4)
    out = torch.empty(p.geometry.chunk_shape(32), dtype=p.geometry.view_dtype)
    before = copy_counts()
    layout._device_gather(p._views, ids, out)
    assert torch.equal(out, reference(host, "BHTC", ids.cpu(), 8, 0, 32))
    dst_host = make_cache("BHTC", blocks=16, bs=8, seed=4)
    q = kv.PagedKV(on_device(dst_host), "BHTC")
    layout._device_scatter(q._views, ids, out, 3)
    assert torch.equal(reference([t.cpu() for t in q.tensors], "BHTC", ids.cpu(), 8, 3, 32), out[:, :, 3:])
    assert copies_since(before) == {"gather_kernels": 1, "scatter_kernels": 1}
    if GPU:
        assert p._dma is None
        toks, ids_a = tokens(64), block_table(8, 16, 1)
        before = copy_counts()
        with kv.KVStore(bucket, model="k", chunk_tokens=32) as s:
            assert s.put(toks, p, ids_a) == 64
            assert s.get(toks, q, ids_a) == 64
        assert copies_since(before) == {"gather_kernels": 2, "scatter_kernels": 2}


def test_bad_arguments_are_named():
    p = kv.PagedKV(make_cache("BHTC", blocks=16, bs=4), "BHTC")
    ids = p.block_ids(block_table(4, 16), 4)
    good = torch.empty((1,) + p.geometry.chunk_shape(16), dtype=p.geometry.view_dtype)
    with pytest.raises(ValueError, match="whole chunks"):
        gather(p._views, ids, good, 3)
    with pytest.raises(ValueError, match="staging must be"):
        gather(p._views, ids, good[:, :1], 4)
    with pytest.raises(ValueError, match="int64"):
        gather(p._views, ids.to(torch.int32), good, 4)
    mixed = [p._views[0], p._views[1].contiguous(), p._views[2]]
    if mixed[1].stride() != mixed[0].stride():
        with pytest.raises(ValueError, match="share shape, dtype and strides"):
            gather(mixed, ids, good, 4)


@pytest.mark.parametrize("rows", [1, 2, 8, 128])
@pytest.mark.parametrize("dims", ["B2THD", "BHTC", "BTD"])
def test_any_rows_per_program_moves_the_same_bytes(dims, rows):
    """ROWS is a launch choice only: tails (15 tokens a chunk), the skip and every layout give the same bytes."""
    bs, n = 3, 10  # 30 tokens in 2 chunks: no rows count above 1 divides them evenly into programs
    src_host = make_cache(dims, blocks=16, bs=bs, seed=5)
    dst_host = make_cache(dims, blocks=16, bs=bs, seed=6)
    src, dst = kv.PagedKV(on_device(src_host), dims), kv.PagedKV(on_device(dst_host), dims)
    a, b = block_table(n, 16, 3), block_table(n, 16, 4)
    staging = torch.empty((2,) + src.geometry.chunk_shape(n // 2 * bs), dtype=src.geometry.view_dtype, device=DEVICE)
    gather(src._views, src.block_ids(a, n), staging, n // 2, rows=rows)
    assert torch.equal(staging.cpu(), staged_reference(src_host, dims, a, bs, 2))
    before = reference([t.cpu() for t in dst.tensors], dims, b, bs, 0, 7)
    scatter(dst._views, dst.block_ids(b, n), staging, n // 2, 7, rows=rows)
    after = [t.cpu() for t in dst.tensors]
    assert torch.equal(reference(after, dims, b, bs, 7, 30), reference(src_host, dims, a, bs, 7, 30))
    assert torch.equal(reference(after, dims, b, bs, 0, 7), before)


def test_rows_must_be_a_power_of_two():
    p = kv.PagedKV(make_cache("BHTC", blocks=16, bs=4), "BHTC")
    ids = p.block_ids(block_table(4, 16), 4)
    staging = torch.empty((1,) + p.geometry.chunk_shape(16), dtype=p.geometry.view_dtype)
    with pytest.raises(ValueError, match="power of two"):
        gather(p._views, ids, staging, 4, rows=3)
