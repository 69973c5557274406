
import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference, tokens

FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD", "BLTHC"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]
CT = 32  # chunk tokens in these tests; block size 8


def files(bucket):
    return sorted(p for p in (bucket / "data").rglob("*.safetensors"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dims", FORMS)
def test_round_trip_is_bit_exact(store, dims, dtype):
    src = make_cache(dims, dtype=dtype, seed=1)
    dst = make_cache(dims, dtype=dtype, seed=2)
    toks = tokens(100)
    ids_src, ids_dst = block_table(13, 24, 1), block_table(13, 24, 2)
    assert store.put(toks, kv.PagedKV(src, dims), ids_src) == 96
    assert store.lookup(toks) == 96
    assert store.get(toks, kv.PagedKV(dst, dims), ids_dst) == 96
    assert torch.equal(reference(dst, dims, ids_dst, 8, 0, 96), reference(src, dims, ids_src, 8, 0, 96))


def test_disk_round_trip_in_a_new_store(bucket):
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(64), block_table(8, 24, 1), block_table(8, 24, 2)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        s.put(toks, kv.PagedKV(src, "BHTC"), a)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 64
        st = s.stats()
        assert (st.disk_hits, st.host_hits) == (2, 0)
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, 64), reference(src, "BHTC", a, 8, 0, 64))


def test_a_chunk_loads_into_another_layout_and_block_size(store):
    src = make_cache("BHTC", bs=8, blocks=24, seed=1)  # vLLM CPU layout, block 8
    dst = make_cache("2BTHD", bs=16, blocks=12, seed=2)  # flash layout, block 16
    toks = tokens(64)
    a, b = block_table(8, 24, 1), block_table(4, 12, 2)
    store.put(toks, kv.PagedKV(src, "BHTC"), a)
    assert store.get(toks, kv.PagedKV(dst, "2BTHD"), b) == 64
    assert torch.equal(reference(dst, "2BTHD", b, 16, 0, 64), reference(src, "BHTC", a, 8, 0, 64))


@pytest.mark.parametrize("start", [0, 5, 32, 45, 63, 64])
def test_start_leaves_earlier_tokens_alone(store, start):
    src, dst = make_cache("BTHC", seed=1), make_cache("BTHC", seed=2)
    before = [t.clone() for t in dst]
    toks, a, b = tokens(64), block_table(8, 24, 1), block_table(8, 24, 2)
    store.put(toks, kv.PagedKV(src, "BTHC"), a)
    assert store.get(toks, kv.PagedKV(dst, "BTHC"), b, start=start) == 64
    if start:
        assert torch.equal(reference(dst, "BTHC", b, 8, 0, start), reference(before, "BTHC", b, 8, 0, start))
    if start < 64:
        assert torch.equal(reference(dst, "BTHC", b, 8, start, 64), reference(src, "BTHC", a, 8, start, 64))


def test_start_past_what_is_held(store):
    cache = make_cache("BHTC")
    toks = tokens(100)
    store.put(toks[:32], kv.PagedKV(cache, "BHTC"), block_table(4, 24))
    assert store.get(toks, kv.PagedKV(cache, "BHTC"), block_table(13, 24), start=40) == 40
    assert store.get(toks, kv.PagedKV(cache, "BHTC"), block_table(13, 24), start=0) == 32


def test_lookup_stops_at_the_first_chunk_that_differs(store):
    cache = make_cache("BHTC")
    toks = tokens(128)
    store.put(toks, kv.PagedKV(cache, "BHTC"), block_table(16, 24))
    other = toks.copy()
    other[70] += 1  # chunk 2
    assert store.lookup(other) == 64
    assert store.lookup(toks[:100]) == 96
    assert store.lookup(toks[:31]) == 0
    dst = make_cache("BHTC", seed=5)
    assert store.get(other, kv.PagedKV(dst, "BHTC"), block_table(16, 24, 3)) == 64


def test_partial_chunks_are_not_stored(store):
    assert store.put(tokens(31), kv.PagedKV(make_cache("BHTC"), "BHTC"), block_table(4, 24)) == 0
    assert store.stats().chunks == 0


def test_nothing_crosses_models_geometry_dtype_or_salt(bucket):
    toks, ids = tokens(64), block_table(8, 24)
    with kv.KVStore(bucket, model="a", chunk_tokens=CT, salt="tenant-1") as s:
        assert s.put(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), ids) == 64
        assert s.lookup(toks) == 64
        assert s.get(toks, kv.PagedKV(make_cache("BHTC", heads=4), "BHTC"), ids) == 0  # other geometry
        assert s.get(toks, kv.PagedKV(make_cache("BHTC", dtype=torch.float16), "BHTC"), ids) == 0  # other dtype
        assert s.get(toks, kv.PagedKV(make_cache("BHTC", layers=4), "BHTC"), ids) == 0
    for kwargs in ({"model": "b", "salt": "tenant-1"}, {"model": "a", "salt": "tenant-2"}, {"model": "a"},
                   {"model": "a", "salt": "tenant-1", "revision": "v2"}, {"model": "a", "salt": "tenant-1", "tp_size": 2},
                   {"model": "a", "salt": "tenant-1", "hash": "sha256"}):
        with kv.KVStore(bucket, chunk_tokens=CT, **kwargs) as s:
            assert s.lookup(toks) == 0, kwargs
            assert s.get(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), ids) == 0, kwargs
    with kv.KVStore(bucket, model="a", chunk_tokens=CT, salt="tenant-1") as s:  # and the right one still hits
        assert s.lookup(toks) == 64


def test_lookup_without_tensors_uses_geometry_or_what_is_stored(bucket):
    toks = tokens(64)
    cache = make_cache("BHTC")
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        s.put(toks, kv.PagedKV(cache, "BHTC"), block_table(8, 24))
        g = s.stats()
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:  # a scheduler: no tensors at all
        assert s.lookup(toks) == 64
    geo = kv.PagedKV(cache, "BHTC").geometry
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, geometry=geo) as s:
        assert s.lookup(toks) == 64
        assert len(s.hashes(toks)) == 2
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, geometry=kv.Geometry(3, 4, 16, "bfloat16")) as s:
        assert s.lookup(toks) == 0
    assert g.chunks == 2


def test_hashes_match_what_is_stored(store):
    toks = tokens(64)
    with pytest.raises(kv.InputError, match="needs the KV geometry"):
        store.hashes(toks)
    store.put(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), block_table(8, 24))
    keys = store.hashes(toks)
    assert [p.stem for p in files(store.root)] == sorted(keys)
    assert store.hashes(toks[:40]) == keys[:1]


def test_put_is_idempotent(store):
    cache, toks, ids = make_cache("BHTC"), tokens(64), block_table(8, 24)
    store.put(toks, kv.PagedKV(cache, "BHTC"), ids)
    assert store.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 64
    s = store.stats()
    assert (s.put_chunks_written, s.put_chunks_present, s.chunks) == (2, 2, 2)


def test_evict_removes_the_chain_after_it(store):
    cache = make_cache("BHTC", blocks=40)
    toks, other = tokens(160), tokens(64, 5)
    store.put(toks, kv.PagedKV(cache, "BHTC"), block_table(20, 40))
    branch = toks.copy()
    branch[100:] += 1  # shares chunks 0-2 with toks
    store.put(branch, kv.PagedKV(cache, "BHTC"), block_table(20, 40))
    store.put(other, kv.PagedKV(cache, "BHTC"), block_table(8, 40))
    assert store.stats().chunks == 5 + 2 + 2
    size = files(store.root)[0].stat().st_size
    assert store.evict(toks[64:]) == 0  # not a prefix of anything held
    assert store.evict(toks[:64]) == 7 * size  # chunks 0, 1 and every chunk chained after them
    assert store.lookup(toks) == 0 and store.lookup(branch) == 0
    assert store.lookup(other) == 64 and len(files(store.root)) == 2
    assert store.stats().used_bytes == 2 * size


def test_capacity_evicts_least_recent_tail_first(bucket):
    cache = make_cache("BHTC", blocks=48)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, capacity=1 << 30) as s:
        s.put(tokens(32, 9), kv.PagedKV(cache, "BHTC"), block_table(4, 48))
        size = s.stats().used_bytes
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, capacity=6 * size) as s:
        a, b = tokens(128, 1), tokens(128, 2)
        s.put(a, kv.PagedKV(cache, "BHTC"), block_table(16, 48))  # 4 chunks, 5 with the first
        assert s.lookup(a) == 128
        s.put(b[:64], kv.PagedKV(cache, "BHTC"), block_table(8, 48))  # needs 1 more: the oldest leaf goes
        assert s.lookup(tokens(32, 9)) == 0 and s.lookup(a) == 128
        s.get(a, kv.PagedKV(cache, "BHTC"), block_table(16, 48))  # a is now the most recent
        s.put(b, kv.PagedKV(cache, "BHTC"), block_table(16, 48))  # 2 more chunks: b's own tail is protected
        assert s.lookup(b) == 128
        assert s.lookup(a) == 64  # a lost its tail, never its prefix
        st = s.stats()
        assert st.used_bytes <= st.capacity_bytes and st.bucket.evictions["capacity"]["chunks"] == 3


def test_a_put_larger_than_the_bucket_stores_its_prefix(bucket):
    cache = make_cache("BHTC", blocks=48)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        s.put(tokens(32, 9), kv.PagedKV(cache, "BHTC"), block_table(4, 48))
        size = s.stats().used_bytes
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, capacity=3 * size) as s:
        toks = tokens(160)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), block_table(20, 48)) == 96
        st = s.stats()
        assert st.put_truncated == 1 and st.used_bytes == 3 * size and s.lookup(toks) == 96


def test_shrinking_capacity_at_open_evicts_down(bucket):
    cache = make_cache("BHTC", blocks=48)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        s.put(tokens(160), kv.PagedKV(cache, "BHTC"), block_table(20, 48))
        size = s.stats().used_bytes // 5
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, capacity=2 * size) as s:
        assert s.stats().used_bytes == 2 * size and s.lookup(tokens(160)) == 64
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        assert s.capacity == 2 * size  # the bucket keeps its capacity


def test_async_handles(store):
    src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
    toks, a, b = tokens(64), block_table(8, 24, 1), block_table(8, 24, 2)
    h = store.put_async(toks, kv.PagedKV(src, "BHTC"), a)
    assert h.wait() == 64 and h.done()
    g = store.get_async(toks, kv.PagedKV(dst, "BHTC"), b)
    assert g.wait() == 64
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, 64), reference(src, "BHTC", a, 8, 0, 64))
    with pytest.raises(kv.BlockIdsError):
        store.put_async(toks, kv.PagedKV(src, "BHTC"), a[:3])


def test_stats_and_close(bucket):
    s = kv.KVStore(bucket, model="m", chunk_tokens=CT, capacity="1MiB")
    s.put(tokens(64), kv.PagedKV(make_cache("BHTC"), "BHTC"), block_table(8, 24), tag="sys/v1")
    d = s.stats().to_dict()
    assert d["chunks"] == 2 and d["capacity_bytes"] == 1 << 20 and d["by_model"]["m"]["tokens"] == 64
    assert d["io"]["direct_writes"] + d["io"]["buffered_writes"] == 2
    s.close()
    with pytest.raises(kv.InputError, match="closed"):
        s.lookup(tokens(64))


@pytest.mark.parametrize("call", ["put", "get"])
def test_bad_input_is_rejected_before_anything_is_written(bucket, call):
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        cache = kv.PagedKV(make_cache("BHTC"), "BHTC")
        fn = getattr(s, call)
        with pytest.raises(kv.TokensError):
            fn([[1, 2]], cache, [0])
        with pytest.raises(kv.BlockIdsError, match="too few"):
            fn(tokens(64), cache, [0, 1, 2])
        with pytest.raises(kv.BlockIdsError, match="lie in"):
            fn(tokens(64), cache, [0, 1, 2, 3, 4, 5, 6, 99])
        with pytest.raises(kv.InputError, match="PagedKV"):
            fn(tokens(64), make_cache("BHTC"), block_table(8, 24))
        with pytest.raises(kv.InputError, match="multiple of the engine block size"):
            fn(tokens(64), kv.PagedKV(make_cache("BHTC", bs=12), "BHTC"), block_table(8, 24))
        if call == "get":
            with pytest.raises(kv.InputError, match="start"):
                s.get(tokens(64), cache, block_table(8, 24), start=65)
        assert files(bucket) == [] and s.stats().used_bytes == 0


@pytest.mark.parametrize("bad", ["lots", "10 parsecs", "-5GiB", "0 parsecs", "GiB", 1.5])  # 0 is the 0 GB tier
def test_bad_capacity_is_named(bucket, bad):
    with pytest.raises(kv.SizeError):
        kv.KVStore(bucket, model="m", capacity=bad)
    assert not (bucket / "bucket.json").exists()


def test_capacity_strings():
    assert kv.parse_size("20GiB") == 20 << 30
    assert kv.parse_size("1.5 MB") == 1_500_000
    assert kv.parse_size(4096) == 4096


def test_bad_store_arguments(bucket):
    for kwargs, match in [({"model": ""}, "model"), ({"model": "m", "chunk_tokens": 0}, "chunk_tokens"),
                          ({"model": "m", "hash": "md5"}, "hash"), ({"model": "m", "tp_rank": 2, "tp_size": 2}, "tp_rank"),
                          ({"model": "m", "geometry": (1, 2)}, "geometry")]:
        with pytest.raises(kv.InputError, match=match):
            kv.KVStore(bucket, **kwargs)
