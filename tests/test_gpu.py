"""GPU variants: engine tensors on a CUDA device. Skipped without one."""

import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference, tokens
from pykvstore.transfer import copy_counts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD"]


def to_cuda(cache):
    return cache.cuda() if isinstance(cache, torch.Tensor) else [t.cuda() for t in cache]


def to_cpu(cache):
    return cache.cpu() if isinstance(cache, torch.Tensor) else [t.cpu() for t in cache]


def test_extension_sees_the_device():
    assert kv.cuda_compiled and kv.cuda_available()


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_cuda_round_trip_matches_the_cpu_path(bucket, dims, dtype):
    host_src = make_cache(dims, dtype=dtype, seed=1, blocks=64, bs=16)
    src, dst = to_cuda(host_src), to_cuda(make_cache(dims, dtype=dtype, seed=2, blocks=64, bs=16))
    toks, a, b = tokens(200), block_table(13, 64, 1), block_table(13, 64, 2)
    path = "dma" if kv.PagedKV(src, dims)._dma is not None else "kernels"
    before = copy_counts()
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.put(toks, kv.PagedKV(src, dims), a) == 192
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:  # from disk
        assert s.get(toks, kv.PagedKV(dst, dims), b, start=70) == 192
    torch.cuda.synchronize()
    # the path meant for this layout moved every chunk (chunk 0 lies before start=70)
    moved = {k: v - before[k] for k, v in copy_counts().items() if v != before[k]}
    assert moved == {f"gather_{path}": 3, f"scatter_{path}": 2}
    got = reference(to_cpu(dst), dims, b, 16, 70, 192)
    assert torch.equal(got, reference(host_src, dims, a, 16, 70, 192))
    # and a CPU engine reads what the GPU engine stored
    cpu_dst = make_cache(dims, dtype=dtype, seed=3, blocks=64, bs=16)
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.get(toks, kv.PagedKV(cpu_dst, dims), b) == 192
    assert torch.equal(reference(cpu_dst, dims, b, 16, 0, 192), reference(host_src, dims, a, 16, 0, 192))


# --- the copy engine (DMA on its own stream) ---------------------------------

def test_block_contiguous_layouts_move_by_dma_and_the_rest_by_kernels():
    dma = kv.PagedKV(to_cuda(make_cache("2BTHD", blocks=8)), "2BTHD")
    kernels = kv.PagedKV(to_cuda(make_cache("BHTC", blocks=8)), "BHTC")
    assert dma._dma is not None and kernels._dma is None
    assert {"dma", "kernels"} <= set(kv.transfer.COPY_PATHS)
    assert dma.block_ids([1, 2], 2).device.type == "cpu" and kernels.block_ids([1, 2], 2).device.type == "cuda"


def test_batched_and_per_copy_paths_move_the_same_bytes():
    from pykvstore import _C
    from pykvstore.transfer import copy_engine

    engine = copy_engine(torch.device("cuda"))
    dev = torch.randint(0, 255, (512, 4096), dtype=torch.uint8, device="cuda")
    ids = torch.randperm(512)[:300]
    pool = _C.HostPool(8 << 20, pin=True)
    assert pool.stats()["pinned"]
    for batched in (True, False):
        buf = _C.AlignedBuffer(300 * 4096, pool)
        host = torch.frombuffer(buf, dtype=torch.uint8).view(300, 4096)
        stream = torch.cuda.current_stream().cuda_stream
        engine.copy([buf.address + j * 4096 for j in range(300)], [dev.data_ptr() + int(i) * 4096 for i in ids],
                    [4096] * 300, stream, batched).wait()
        assert torch.equal(host, dev[ids].cpu())
        back = torch.zeros_like(dev)
        t = engine.copy([back.data_ptr() + int(i) * 4096 for i in ids], [buf.address + j * 4096 for j in range(300)],
                        [4096] * 300, stream, batched)
        engine.order_after(t, stream)
        assert torch.equal(back[ids], dev[ids])  # ordered on the device: no host wait needed first
        t.wait()


def test_a_store_waits_for_the_kernels_that_write_its_kv(bucket):
    """The KV is written on a side stream behind a long kernel; the copy stream
    must wait for it. Without the event wait the chunk would hold stale zeros."""
    caches = [torch.zeros(2, 64, 16, 2, 16, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    side = torch.cuda.Stream()
    toks, ids = tokens(128), block_table(8, 64, 1)
    side.wait_stream(torch.cuda.current_stream())  # the zeros land first
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the writes below run
        for c in caches:
            c.fill_(3.0)
        with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
            assert s.put(toks, kv.PagedKV(caches, "2BTHD"), ids) == 128
    torch.cuda.synchronize()
    dst = [torch.zeros(2, 64, 16, 2, 16, dtype=torch.bfloat16) for _ in range(3)]
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.get(toks, kv.PagedKV(dst, "2BTHD"), ids) == 128
    assert all(bool((d[:, torch.as_tensor(ids)] == 3.0).all()) for d in dst)


def test_a_load_orders_the_engine_stream_after_its_copies(bucket):
    src = to_cuda(make_cache("2BTHD", blocks=64, bs=16, seed=1))
    toks, a, b = tokens(256), block_table(16, 64, 1), block_table(16, 64, 2)
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.put(toks, kv.PagedKV(src, "2BTHD"), a) == 256
    dst = to_cuda(make_cache("2BTHD", blocks=64, bs=16, seed=2))
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.get(toks, kv.PagedKV(dst, "2BTHD"), b) == 256
        sums = [d[:, torch.as_tensor(b, device="cuda")].float().sum() for d in dst]  # same stream, no sync
        want = [x[:, torch.as_tensor(a, device="cuda")].float().sum() for x in src]
        assert all(torch.equal(x, y) for x, y in zip(sums, want))
        assert s.stats().pool["pinned"]


def test_cupy_arrays_are_accepted_like_torch_tensors(bucket):
    cupy = pytest.importorskip("cupy")
    host = make_cache("2BTHD", blocks=32, bs=16, seed=4, dtype=torch.float16)
    src = [cupy.asarray(t.numpy()) for t in host]
    dst = [cupy.zeros_like(x) for x in src]
    toks, a, b = tokens(128), block_table(8, 32, 1), block_table(8, 32, 2)
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.put(toks, kv.PagedKV(src, "2BTHD"), cupy.asarray(a)) == 128
        assert s.get(toks, kv.PagedKV(dst, "2BTHD"), cupy.asarray(b)) == 128
    got = [torch.from_numpy(cupy.asnumpy(x)) for x in dst]
    assert torch.equal(reference(got, "2BTHD", b, 16, 0, 128), reference(host, "2BTHD", a, 16, 0, 128))
