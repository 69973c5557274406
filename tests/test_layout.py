import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore.layout import Geometry
from pykvstore.transfer import copy_counts
from helpers import INT_VIEW, block_table, make_cache, reference

FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "BTC", "LB2THD", "BL2THD", "LBHTC", "BLTHC", "LBTD"]


def gather_chunk(cache, dims, ids, **kw):
    p = kv.PagedKV(cache, dims=dims)
    g = p.geometry
    out = torch.empty(g.chunk_shape(len(ids) * p.block_size), dtype=g.view_dtype)
    p.gather(p.block_ids(ids, len(ids)), out)
    return out


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_gather_matches_token_reference(dims, noncontiguous):
    cache = make_cache(dims, noncontiguous=noncontiguous)
    ids = block_table(4, 24)
    out = gather_chunk(cache, dims, ids)
    assert torch.equal(out, reference(cache, dims, ids, 8, 0, 32))


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("skip", [0, 3, 8, 13])
def test_scatter_writes_only_from_skip(dims, skip):
    src_cache = make_cache(dims, seed=1)
    dst_cache = make_cache(dims, seed=2, noncontiguous=True)
    before = [t.clone() for t in dst_cache] if isinstance(dst_cache, list) else dst_cache.clone()
    ids_src, ids_dst = block_table(4, 24, 1), block_table(4, 24, 2)
    chunk = gather_chunk(src_cache, dims, ids_src)
    p = kv.PagedKV(dst_cache, dims=dims)
    p.scatter(p.block_ids(ids_dst, 4), chunk, skip)
    assert torch.equal(reference(dst_cache, dims, ids_dst, 8, skip, 32), chunk[:, :, skip:])
    if skip:
        assert torch.equal(reference(dst_cache, dims, ids_dst, 8, 0, skip), reference(before, dims, ids_dst, 8, 0, skip))
    # blocks outside the table are untouched
    others = sorted(set(range(24)) - set(ids_dst.tolist()))
    assert torch.equal(reference(dst_cache, dims, others, 8, 0, 8 * len(others)),
                       reference(before, dims, others, 8, 0, 8 * len(others)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2])
def test_gather_is_bit_exact_for_every_dtype(dtype):
    cache = make_cache("BHTC", dtype=dtype)
    ids = block_table(4, 24)
    out = gather_chunk(cache, "BHTC", ids)
    assert out.dtype == INT_VIEW[torch.empty((), dtype=dtype).element_size()]
    assert torch.equal(out, reference(cache, "BHTC", ids, 8, 0, 32))


def test_geometry_of_each_form():
    assert kv.PagedKV(make_cache("BHTC"), "BHTC").geometry == Geometry(3, 2, 16, "bfloat16")
    assert kv.PagedKV(make_cache("LB2THD"), "LB2THD").geometry == Geometry(3, 2, 16, "bfloat16")
    assert kv.PagedKV(make_cache("BTD", hd=72), "BTD").geometry == Geometry.mla(3, 72, torch.bfloat16)
    p = kv.PagedKV(make_cache("2BTHD", blocks=10, bs=16), "2BTHD")
    assert (p.num_blocks, p.block_size) == (10, 16)


def test_dict_of_layers_keeps_insertion_order():
    layers = make_cache("BHTC")
    d = {f"model.layers.{i}.attn": t for i, t in enumerate(layers)}
    ids = block_table(4, 24)
    assert torch.equal(gather_chunk(d, "BHTC", ids), gather_chunk(layers, "BHTC", ids))


@pytest.mark.parametrize("dims, match", [
    ("BXTHC", "unknown letters 'X'"),
    ("BTTHC", "repeats 'T'"),
    ("2BHD", "lacks 'T'"),
    ("BTH", "not a KV layout"),
    ("B2THC", "not a KV layout"),
    ("", "non-empty"),
])
def test_bad_dims_are_named(dims, match):
    with pytest.raises(kv.LayoutError, match=match):
        kv.PagedKV([torch.zeros([2] * max(len(dims), 1))], dims=dims)


def test_shapes_that_disagree_are_rejected():
    a, b = torch.zeros(4, 2, 8, 32), torch.zeros(4, 2, 8, 34)
    with pytest.raises(kv.LayoutError, match="layer 1 is"):
        kv.PagedKV([a, b], "BHTC")
    with pytest.raises(kv.LayoutError, match="names 4"):
        kv.PagedKV([torch.zeros(4, 8, 32)], "BHTC")
    with pytest.raises(kv.LayoutError, match="must be even"):
        kv.PagedKV([torch.zeros(4, 2, 8, 33)], "BHTC")
    with pytest.raises(kv.LayoutError, match="L .layer. axis"):
        kv.PagedKV(torch.zeros(4, 2, 8, 32), "BHTC")
    with pytest.raises(kv.LayoutError, match="has an L axis"):
        kv.PagedKV([torch.zeros(3, 4, 2, 8, 32)], "LBHTC")
    with pytest.raises(kv.LayoutError, match="unsupported KV dtype"):
        kv.PagedKV([torch.zeros(4, 2, 8, 32, dtype=torch.int32)], "BHTC")
    with pytest.raises(kv.LayoutError, match="not a torch.Tensor"):
        kv.PagedKV([np.zeros((4, 2, 8, 32))], "BHTC")


def test_block_ids_are_checked():
    p = kv.PagedKV(make_cache("BHTC"), "BHTC")
    with pytest.raises(kv.BlockIdsError, match="too few block ids"):
        p.block_ids([0, 1], 3)
    with pytest.raises(kv.BlockIdsError, match=r"lie in \[0, 24\)"):
        p.block_ids([0, 24, 1], 3)
    with pytest.raises(kv.BlockIdsError, match=r"lie in \[0, 24\)"):
        p.block_ids([-1, 2, 1], 3)
    with pytest.raises(kv.BlockIdsError, match="integers"):
        p.block_ids([0.5, 2.0, 1.0], 3)
    with pytest.raises(kv.BlockIdsError, match="1-D"):
        p.block_ids([[0, 1]], 1)
    assert p.block_ids(torch.tensor([3, 2, 1]), 3).tolist() == [3, 2, 1]


@pytest.mark.parametrize("dims", ["2BTHD", "BHTC", "BTD"])
def test_layers_with_different_strides_take_the_torch_path(dims):
    """The path CUDA tensors use until the Triton kernels: same bytes as the native copier."""
    a = make_cache(dims, seed=3)
    b = make_cache(dims, seed=3, noncontiguous=True)
    for x, y in zip(a, b):
        y.copy_(x)
    mixed = [a[0], b[1], a[2]]
    p = kv.PagedKV(mixed, dims)
    assert p._native is None and kv.PagedKV(a, dims)._native is not None
    ids = block_table(4, 24)
    before = copy_counts()
    assert torch.equal(gather_chunk(mixed, dims, ids), gather_chunk(a, dims, ids))
    dst = [t.clone() for t in make_cache(dims, seed=4)]
    dst[1] = make_cache(dims, seed=4, noncontiguous=True)[1]
    q = kv.PagedKV(dst, dims)
    chunk = gather_chunk(a, dims, ids)
    q.scatter(q.block_ids(ids, 4), chunk, 5)
    assert torch.equal(reference(dst, dims, ids, 8, 5, 32), chunk[:, :, 5:])
    moved = {k: v - before[k] for k, v in copy_counts().items() if v != before[k]}
    assert moved == {"gather_torch_host": 1, "gather_native": 2, "scatter_torch_host": 1}


def test_chunk_buffers_are_checked_before_native_code_touches_them():
    p = kv.PagedKV(make_cache("BHTC"), "BHTC")
    ids = p.block_ids(block_table(4, 24), 4)
    with pytest.raises(kv.InputError, match="chunk buffer"):
        p.gather(ids, torch.empty(10, dtype=torch.int16))
    good = torch.empty(p.geometry.chunk_shape(32), dtype=torch.int16)
    with pytest.raises(kv.InputError, match="chunk buffer"):
        p.scatter(ids, good.transpose(0, 1), 0)


def test_plane_strides_describe_a_block_whose_planes_differ():
    """vLLM's CPU layout: per (block, head), K channel-major [D, T], then V token-major [T, D]."""
    B, H, T, D, L = 6, 2, 8, 4, 3
    canon = torch.randint(-1000, 1000, (L, 2, 3 * T, H, D), dtype=torch.int32).float()  # 3 blocks of chunk
    ids = [4, 1, 5]
    layers = [torch.zeros(B, H, T, 2 * D) for _ in range(L)]
    for layer in range(L):
        flat = layers[layer].view(B, H, 2 * T * D)
        for j, b in enumerate(ids):
            for h in range(H):
                k = canon[layer, 0, j * T:(j + 1) * T, h]  # (T, D)
                v = canon[layer, 1, j * T:(j + 1) * T, h]
                flat[b, h, : T * D] = k.t().reshape(-1)
                flat[b, h, T * D:] = v.reshape(-1)
    strides = [(0, 1, 2 * T * D, T), (T * D, D, 2 * T * D, 1)]
    p = kv.PagedKV(layers, "BHTC", plane_strides=strides)
    out = torch.empty(p.geometry.chunk_shape(3 * T), dtype=torch.int32)
    p.gather(torch.tensor(ids), out)
    assert torch.equal(out, canon.view(torch.int32))
    back = [torch.zeros_like(t) for t in layers]
    q = kv.PagedKV(back, "BHTC", plane_strides=strides)
    q.scatter(torch.tensor(ids), out, skip=3)
    for a, b in zip(back, layers):
        a4, b4 = a.view(B, H, 2, T * D), b.view(B, H, 2, T * D)
        assert torch.equal(a4[ids][:, :, 1].view(3, H, T, D)[:, :, 3:], b4[ids][:, :, 1].view(3, H, T, D)[:, :, 3:])
        assert torch.equal(a4[ids][:, :, 0].view(3, H, D, T)[..., 3:], b4[ids][:, :, 0].view(3, H, D, T)[..., 3:])
        assert not a4[ids][:, :, 0].view(3, H, D, T)[0, ..., :3].any()  # tokens before skip untouched
    with pytest.raises(kv.LayoutError, match="outside a block"):
        kv.PagedKV(layers, "BHTC", plane_strides=[(0, 1, 2 * T * D, T), (T * D, D, 2 * T * D, 2)])
    with pytest.raises(kv.LayoutError, match="rows of"):
        kv.PagedKV(layers, "BHTC", plane_strides=[(0, 1, 2, 3)])


def test_store_stats_show_which_copy_path_ran(bucket):
    """Host blocks with one stride set go through the native copier, and stats() says so."""
    toks, cache, ids = np.arange(96, dtype=np.int64), make_cache("BHTC", seed=5), block_table(12, 24)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        before = s.stats().copies
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
        after = s.stats().copies
    assert after["gather_native"] - before["gather_native"] == 3
    assert {k for k in after if after[k] != before[k]} == {"gather_native"}
