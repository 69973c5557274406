"""The transfer engine on CPU: the host pool, mapped loads, the run lists the
DMA path copies, fault injection and buffer accounting. GPU variants are in
test_gpu.py."""

import ctypes
import errno
import gc
import os
import time

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import _C
from pykvstore.transfer import block_contiguous
import helpers
from helpers import block_table, make_cache, reference, tokens

MiB = 1 << 20


def settled_free_bytes(stats, want: int) -> int:
    """The pool's free bytes once the I/O threads have dropped their finished tasks
    (a task's buffer is released just after its future is ready), or what it is after 2 s."""
    deadline = time.monotonic() + 2.0
    while stats()["free_bytes"] != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return stats()["free_bytes"]


def test_pool_best_fit_and_coalescing_return_every_byte():
    pool = _C.HostPool(64 * MiB, pin=False)
    start = pool.stats()
    assert start["free_bytes"] == start["largest_free"] == 64 * MiB and not start["pinned"]
    rng = np.random.default_rng(0)
    live = []
    for step in range(2000):
        if live and (rng.random() < 0.45 or len(live) > 40):
            live.pop(int(rng.integers(len(live))))
        else:
            live.append(_C.AlignedBuffer(int(rng.integers(1, 3 * MiB)), pool))
            assert live[-1].address % _C.DIRECT_ALIGNMENT == 0
        s = pool.stats()
        held = sum(b.capacity for b in live if b.from_pool)
        assert s["free_bytes"] == 64 * MiB - held and s["live_buffers"] == sum(b.from_pool for b in live)
    # no two live buffers overlap
    spans = sorted((b.address, b.address + b.capacity) for b in live if b.from_pool)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    live.clear()
    s = pool.stats()
    assert s["free_bytes"] == s["largest_free"] == 64 * MiB and s["live_buffers"] == 0  # coalesced back to one range


def test_an_exhausted_pool_falls_back_to_the_heap():
    pool = _C.HostPool(8 * MiB, pin=False)
    a = _C.AlignedBuffer(6 * MiB, pool)
    b = _C.AlignedBuffer(6 * MiB, pool)  # does not fit: heap, counted
    assert a.from_pool and not b.from_pool
    assert pool.stats()["exhausted"] == 1
    np.frombuffer(b, dtype=np.uint8)[:] = 1  # an ordinary, usable buffer
    del a, b
    assert pool.stats()["free_bytes"] == 8 * MiB


def test_io_threads_share_the_pool(tmp_path):
    """Reads on four I/O threads take their buffers from one pool at once."""
    pool = _C.HostPool(32 * MiB, pin=False)
    engine = _C.FileEngine(4)
    engine.set_pool(pool)
    src = _C.AlignedBuffer(MiB + 123)
    np.frombuffer(src, dtype=np.uint8)[:] = np.random.default_rng(1).integers(0, 256, len(src), dtype=np.uint8)
    for i in range(8):
        engine.write(str(tmp_path / f"f{i}"), str(tmp_path / f"t{i}"), src, len(src), 0).result()
    for _ in range(20):
        results = [engine.read(str(tmp_path / f"f{i}"), 0, 2 * MiB) for i in range(8)]
        bufs = [r.result().buffer for r in results]
        assert all(b.from_pool and bytes(b) == bytes(src) for b in bufs)
        del bufs, results
    assert settled_free_bytes(pool.stats, 32 * MiB) == 32 * MiB and pool.stats()["allocations"] == 160


@pytest.fixture
def cold_via_page_cache():
    """cold_read="cache": files just written with O_DIRECT (cold) load through the page cache
    like warm ones (the default, "auto", would read them with O_DIRECT: tests/test_cold_read.py)."""
    before = kv.defaults.get("cold_read")
    kv.defaults.set(cold_read="cache")
    yield
    kv.defaults.set(cold_read=before)


def test_loads_into_host_memory_come_from_the_mapping(bucket, read_path, cold_via_page_cache):
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(96), block_table(12, 24, 1), block_table(12, 24, 2)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 96
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b, start=5) == 96
        io = s.stats().io
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 96  # the second time from the host tier
        assert s.stats().host_hits == 3
    if read_path == "auto":  # mapped, and copied by the I/O threads as they verify
        assert io["mapped_reads"] == 3 and io["buffered_reads"] == 0 and io["copied_while_verifying"] == 3
    else:
        assert io["mapped_reads"] == 0 and io["buffered_reads"] == 3 and io["copied_while_verifying"] == 0
    assert torch.equal(reference(dst, "BHTC", b, 8, 5, 96), reference(src, "BHTC", a, 8, 5, 96))


def test_a_mapping_outlives_the_file_being_evicted(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10000)
    m = _C.MappedFile(str(path), 1 << 20, True)
    path.unlink()
    assert len(m) == 10000 and bytes(memoryview(m)[9990:]) == b"x" * 10
    with pytest.raises(OSError, match="larger than expected") as e:
        (tmp_path / "g").write_bytes(b"y" * 100)
        _C.MappedFile(str(tmp_path / "g"), 10)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(tmp_path / "g")


def write_chunk_file(path, payload: bytes, header_len: int = 4088) -> None:
    import struct

    path.write_bytes(struct.pack("<Q", header_len) + b" " * header_len + payload)


@pytest.mark.parametrize("dims", ["2BTHD", "BHTC", "BTD"])
@pytest.mark.parametrize("skip", [0, 21])
def test_a_verifying_copy_writes_the_blocks_and_the_files_hash(tmp_path, dims, skip):
    """map_scatter: one pass over the mapping both copies into the blocks and hashes."""
    src = make_cache(dims, seed=5, blocks=24, bs=16, heads=8, hd=128)  # 32 KiB runs in 2BTHD: streamed stores
    pkv = kv.PagedKV(src, dims)
    ids = torch.as_tensor(block_table(4, 24, 6), dtype=torch.int64)
    chunk = torch.empty(pkv.geometry.chunk_shape(64), dtype=pkv.geometry.view_dtype)
    pkv.gather(ids, chunk)
    payload = chunk.numpy().tobytes()
    write_chunk_file(tmp_path / "c", payload)
    dst = make_cache(dims, seed=6, blocks=24, bs=16, heads=8, hd=128)
    dkv = kv.PagedKV(dst, dims)
    dids = torch.as_tensor(block_table(4, 24, 7), dtype=torch.int64)
    before = reference(dst, dims, dids, 16, 0, 64)
    eng = _C.FileEngine(2)
    r = eng.map_scatter(str(tmp_path / "c"), 1 << 30, dkv.host_layout, dids.data_ptr(), 4, skip, len(payload)).result()
    assert r.scattered and r.payload_hash == _C.xxh3_64(payload)
    assert torch.equal(reference(dst, dims, dids, 16, skip, 64), reference(src, dims, ids, 16, skip, 64))
    if skip:  # tokens before skip are the engine's own and stay as they were
        assert not torch.equal(reference(dst, dims, dids, 16, 0, skip), reference(src, dims, ids, 16, 0, skip))
    assert eng.counters()["copied_while_verifying"] == 1
    # a payload of another size is hashed but never copied
    fresh = make_cache(dims, seed=6, blocks=24, bs=16, heads=8, hd=128)
    fkv = kv.PagedKV(fresh, dims)
    write_chunk_file(tmp_path / "short", payload[:-2])
    r = eng.map_scatter(str(tmp_path / "short"), 1 << 30, fkv.host_layout, dids.data_ptr(), 4, 0, len(payload)).result()
    assert not r.scattered and r.payload_hash == _C.xxh3_64(payload[:-2])
    assert torch.equal(reference(fresh, dims, dids, 16, 0, 64), before)
    (tmp_path / "nohdr").write_bytes(b"\xff" * 7)
    r = eng.map_scatter(str(tmp_path / "nohdr"), 1 << 30, fkv.host_layout, dids.data_ptr(), 4, 0, len(payload)).result()
    assert not r.scattered and r.payload_hash is None


@pytest.mark.parametrize("offset_elems", [0, 1, 8])
@pytest.mark.parametrize("heads,hd", [(8, 128), (3, 85)])
def test_streamed_stores_land_where_plain_copies_do(offset_elems, heads, hd):
    """Scatter writes large aligned runs with non-temporal stores and the rest with memcpy;
    a misaligned base (1 element = 2 bytes) or a run that is not whole cache lines
    (3 x 85 channels: 8,160 bytes) takes memcpy."""
    shape = (2, 24, 16, heads, hd)  # 2BTHD: a run is one (plane, block)
    src = make_cache("2BTHD", seed=8, blocks=24, bs=16, heads=heads, hd=hd, layers=2)
    dst = []
    for _ in range(2):
        flat = torch.zeros(int(np.prod(shape)) + offset_elems, dtype=torch.bfloat16)
        dst.append(flat[offset_elems:].view(shape))
    ids = torch.as_tensor(block_table(6, 24, 9), dtype=torch.int64)
    dids = torch.as_tensor(block_table(6, 24, 10), dtype=torch.int64)
    pkv, dkv = kv.PagedKV(src, "2BTHD"), kv.PagedKV(dst, "2BTHD")
    chunk = torch.empty(pkv.geometry.chunk_shape(96), dtype=pkv.geometry.view_dtype)
    pkv.gather(ids, chunk)
    dkv.scatter(dids, chunk, 3)
    for a, b in zip(dst, src):
        want = torch.zeros_like(a)
        want[:, dids] = b[:, ids]
        want[:, dids[0], :3] = 0  # tokens before skip are not written
        assert torch.equal(a.view(torch.int16), want.view(torch.int16))  # bit patterns: random bits hold NaNs


@pytest.mark.parametrize("dims", ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD"])
def test_the_run_list_moves_exactly_what_gather_and_scatter_move(dims):
    """The DMA path copies the spans block_runs lists; replay them with memmove here."""
    cache = make_cache(dims, seed=3, blocks=24, bs=8)
    pkv = kv.PagedKV(cache, dims)
    ids = torch.as_tensor(block_table(6, 24, 5), dtype=torch.int64)
    shape, dtype = pkv.geometry.chunk_shape(48), pkv.geometry.view_dtype
    want = torch.empty(shape, dtype=dtype)
    pkv.gather(ids, want)
    got = torch.zeros(shape, dtype=dtype)
    runs = _C.block_runs(pkv._native, ids.data_ptr(), len(ids), got.data_ptr(), 0)
    for engine, chunk, n in runs:
        ctypes.memmove(chunk, engine, n)
    assert torch.equal(got, want)
    if block_contiguous(pkv._views[0]):  # one run per (layer, plane, block) at most: what DMA is used for
        assert len(runs) <= pkv.geometry.layers * pkv.geometry.planes * len(ids)
    # and back, from token 13 on, into a fresh cache
    dst = make_cache(dims, seed=4, blocks=24, bs=8)
    dkv = kv.PagedKV(dst, dims)
    for engine, chunk, n in _C.block_runs(dkv._native, ids.data_ptr(), len(ids), want.data_ptr(), 13):
        ctypes.memmove(engine, chunk, n)
    assert torch.equal(reference(dst, dims, ids, 8, 13, 48), reference(cache, dims, ids, 8, 13, 48))
    assert not torch.equal(reference(dst, dims, ids, 8, 0, 13), reference(cache, dims, ids, 8, 0, 13))


@pytest.mark.skipif(kv.cuda_available(), reason="checks the answer without a device")
def test_device_copies_say_why_they_are_unavailable():
    with pytest.raises(RuntimeError, match="without CUDA|no(ne)? .*visible"):
        _C.CopyEngine(0)


@pytest.fixture
def one_in_flight():
    """Writes one at a time, so the n-th write is the n-th chunk."""
    before = kv.defaults.get("inflight")
    kv.defaults.set(inflight=1)
    yield
    kv.defaults.set(inflight=before)


def test_a_faulty_write_is_reported_on_the_handle(bucket, one_in_flight):
    src = make_cache("BHTC", seed=1)
    toks, ids = tokens(96), block_table(12, 24, 1)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        s.bucket.engine.inject_faults("write", 2, errno.EIO)  # the second chunk's write tears
        h = s.put_async(toks, kv.PagedKV(src, "BHTC"), ids)
        assert h.wait() == 32  # the prefix before the fault is stored; nothing raised
        [err] = h.errors
        assert isinstance(err, OSError) and err.errno == errno.EIO
        assert "injected" in str(err) and err.filename.endswith(".safetensors")
        with pytest.raises(OSError, match="injected"):
            h.wait(check=True)
        s.bucket.engine.inject_faults("write", 0)
        assert s.lookup(toks) == 32 and not any((bucket / "tmp").iterdir())  # no torn file left
        h = s.put_async(toks, kv.PagedKV(src, "BHTC"), ids)
        assert h.wait(check=True) == 96 and h.errors == []


def test_a_faulty_read_is_a_miss_reported_on_the_handle(bucket, one_in_flight):
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(96), block_table(12, 24, 1), block_table(12, 24, 2)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 96
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        s.bucket.engine.inject_faults("read", 2, errno.EIO)
        h = s.get_async(toks, kv.PagedKV(dst, "BHTC"), b)
        assert h.wait() == 32
        assert [type(e) for e in h.errors] == [OSError] and "injected" in str(h.errors[0])


def test_ten_thousand_puts_with_faults_return_every_pool_byte(bucket, no_fsync):
    """Every error path hands its buffers back: writes fail one in 7, reads one
    in 5, the bucket evicts all along; the pool ends where it started."""
    geometry = kv.Geometry(layers=2, heads=1, head_dim=8, dtype="bfloat16")
    with kv.KVStore(bucket, model="m", chunk_tokens=8, capacity="2MiB", host_capacity=0) as s:
        start = s.stats().pool
        cache = kv.PagedKV(make_cache("BHTC", layers=2, heads=1, hd=8, blocks=4, bs=8, seed=1), "BHTC")
        dst = kv.PagedKV(make_cache("BHTC", layers=2, heads=1, hd=8, blocks=4, bs=8, seed=2), "BHTC")
        assert cache.geometry == geometry
        s.bucket.engine.inject_faults("write", 7, errno.EIO)
        s.bucket.engine.inject_faults("read", 5, errno.EIO)
        stored = loaded = 0
        for i in range(10_000):
            toks = np.arange(16) + 16 * (i % 2500)  # revisits: existing chunks, evicted ones, new ones
            stored += s.put(toks, cache, [0, 1]) > 0
            if i % 10 == 0:
                loaded += s.get(toks, dst, [2, 3]) > 0
        gc.collect()
        settled_free_bytes(lambda: s.stats().pool, start["free_bytes"])
        end = s.stats()
        assert end.io["injected_faults"] > 1000 and end.put_errors == 0
        assert 0 < stored < 10_000 and loaded > 0
        assert end.pool["free_bytes"] == start["free_bytes"] == end.pool["capacity"]
        assert end.pool["live_buffers"] == 0 and end.pool["exhausted"] == 0
        assert end.used_bytes <= end.capacity_bytes
        assert not any((bucket / "tmp").iterdir())
    report = kv.Bucket(bucket).fsck()
    assert report["checked"] > 0 and not (report["missing"] or report["damaged"] or report["unindexed"]), report


def test_put_async_copies_the_kv_out_before_it_returns(bucket):
    """The engine may reuse its blocks as soon as put_async returns (vLLM frees or
    preempts them): the background writes use the copies, never the blocks."""
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    original = [t.clone() for t in src]
    toks, a, b = tokens(96), block_table(12, 24, 1), block_table(12, 24, 2)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        with s._catalog.transaction():  # the put thread cannot reach the catalog (so cannot write) yet
            h = s.put_async(toks, kv.PagedKV(src, "BHTC"), a)
            for t in src:
                t.zero_()  # the engine reuses the blocks
        assert h.wait(check=True) == 96
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 96
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, 96), reference(original, "BHTC", a, 8, 0, 96))


def test_put_async_stores_what_fits_the_pool(bucket):
    before = kv.defaults.get("host_pool")
    geometry = kv.PagedKV(make_cache("BHTC"), "BHTC").geometry
    kv.defaults.set(host_pool=3 * (4096 + geometry.chunk_bytes(32)))  # room for three staged chunks
    try:
        with kv.KVStore(bucket, model="m", chunk_tokens=32, host_capacity=0) as s:
            src = make_cache("BHTC", seed=1, blocks=48)
            h = s.put_async(tokens(192), kv.PagedKV(src, "BHTC"), block_table(24, 48, 1))
            assert h.wait() == 96 and s.stats().pool["exhausted"] >= 1
            assert s.put(tokens(192), kv.PagedKV(src, "BHTC"), block_table(24, 48, 1)) == 192  # put copies as it goes
    finally:
        kv.defaults.set(host_pool=before)


def test_readahead_asks_for_a_cold_files_pages_once(tmp_path):
    """A file out of the page cache is asked for when a load is submitted; one
    that is in it (or on its way) is not, and what cannot be looked at is no error."""
    d = helpers.cold_dir(tmp_path)
    engine = _C.FileEngine(2)
    assert not engine.readahead_enabled  # stores turn it on with defaults' readahead
    engine.readahead_enabled = True
    src = _C.AlignedBuffer(3 * MiB + 4096)
    np.frombuffer(src, dtype=np.uint8)[:] = np.random.default_rng(3).integers(0, 256, len(src), dtype=np.uint8)
    path = d / "chunk"
    engine.write(str(path), str(d / "tmp"), src, len(src), 0).result()
    helpers.drop_page_cache([path])
    assert engine.readahead(str(path))
    c = engine.counters()
    assert c["cold_reads"] == 1 and c["readahead_bytes"] == len(src)
    # (the read may count the file again: pages still on their way are not in the cache yet)
    assert bytes(engine.read(str(path), 0, 8 * MiB).result().buffer) == bytes(src)
    assert not engine.readahead(str(path))  # every page is in the cache now
    cold = engine.counters()["cold_reads"]
    engine.readahead_enabled = False
    helpers.drop_page_cache([path])
    assert not engine.readahead(str(path)) and engine.counters()["cold_reads"] == cold
    engine.readahead_enabled = True
    fifo = d / "fifo"
    os.mkfifo(fifo)
    assert not any(engine.readahead(str(p)) for p in (d / "missing", d, fifo))  # never blocks on the FIFO
    assert engine.counters()["cold_reads"] == cold


def test_cold_checks_never_follow_a_link_or_map_a_file_larger_than_a_chunk(tmp_path):
    """is_cold and readahead run on the caller's thread before any read: a link where a
    chunk should be is not followed (nothing below a bucket's root is), and a file larger
    than the read that follows will take (a sparse 1 TiB file here cost 10 s and 256 MiB
    of page flags) is not looked at; the read reports both."""
    d = helpers.cold_dir(tmp_path)
    engine = _C.FileEngine(1)
    engine.readahead_enabled = True
    target = d / "outside"
    target.write_bytes(b"\1" * MiB)
    helpers.drop_page_cache([target])
    assert engine.is_cold(str(target))  # the control: the file itself is cold
    (d / "linked").mkdir()
    (d / "linked" / "chunk").symlink_to(target)
    (d / "dirlink").symlink_to(d / "linked")
    for link in (d / "linked" / "chunk", d / "dirlink" / "chunk"):
        assert not engine.is_cold(str(link)) and not engine.readahead(str(link))
    assert engine.counters()["cold_reads"] == 0
    big = d / "sparse"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    assert engine.is_cold(str(big))  # cold, but larger than a read of 8 MiB takes
    assert not engine.is_cold(str(big), 8 * MiB) and not engine.readahead(str(big), 8 * MiB)
    assert engine.counters()["cold_reads"] == 0


@pytest.fixture
def cold_through_the_page_cache():
    before = kv.defaults.get("cold_read"), kv.defaults.get("readahead")
    kv.defaults.set(cold_read="cache", readahead=True)  # the default cold_read, readahead on
    yield
    kv.defaults.set(cold_read=before[0], readahead=before[1])


def test_a_cold_get_asks_for_every_chunk_ahead_and_loads_them_exactly(tmp_path, read_path,
                                                                     cold_through_the_page_cache):
    d = helpers.cold_dir(tmp_path)
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(160), block_table(20, 24, 1), block_table(20, 24, 2)
    with kv.KVStore(d / "bucket", model="m", chunk_tokens=32) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 160
    helpers.drop_page_cache(list((d / "bucket" / "data").rglob("*.safetensors")))
    with kv.KVStore(d / "bucket", model="m", chunk_tokens=32, host_capacity=1) as s:
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 160
        assert s.stats().io["cold_reads"] == 5
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 160  # warm now: nothing asked for
        assert s.stats().io["cold_reads"] == 5
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, 160), reference(src, "BHTC", a, 8, 0, 160))


@pytest.fixture
def cold_direct():
    before = kv.defaults.get("cold_read")
    kv.defaults.set(cold_read="direct")
    yield
    kv.defaults.set(cold_read=before)


def test_a_cold_get_reads_with_o_direct_and_a_warm_one_through_the_page_cache(tmp_path, read_path, cold_direct):
    """cold_read="direct": a chunk file mostly out of the page cache is read with O_DIRECT
    (hashed on an I/O thread like any read); once the files are cached, loads use the cache again."""
    d = helpers.cold_dir(tmp_path)
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(160), block_table(20, 24, 1), block_table(20, 24, 2)
    with kv.KVStore(d / "bucket", model="m", chunk_tokens=32) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 160
    files = list((d / "bucket" / "data").rglob("*.safetensors"))
    helpers.drop_page_cache(files)
    with kv.KVStore(d / "bucket", model="m", chunk_tokens=32, host_capacity=1) as s:
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 160
        io = s.stats().io
        assert io["direct_reads"] + io["direct_fallbacks"] == 5 and io["mapped_reads"] == 0
        assert torch.equal(reference(dst, "BHTC", b, 8, 0, 160), reference(src, "BHTC", a, 8, 0, 160))
        for f in files:  # into the page cache
            f.read_bytes()
        dst2 = make_cache("BHTC", seed=3)
        assert s.get(toks, kv.PagedKV(dst2, "BHTC"), b) == 160
        io2 = s.stats().io
        assert io2["direct_reads"] == io["direct_reads"]
        assert io2["mapped_reads" if read_path == "auto" else "buffered_reads"] - io[
            "mapped_reads" if read_path == "auto" else "buffered_reads"] == 5
    assert torch.equal(reference(dst2, "BHTC", b, 8, 0, 160), reference(src, "BHTC", a, 8, 0, 160))


def test_cold_read_and_readahead_settings_are_checked():
    with pytest.raises(kv.InputError, match="cold_read"):
        kv.defaults.set(cold_read="fast")
    assert kv.defaults.get("cold_read") in ("auto", "cache", "direct")
