"""KVStore._with_salt, the vLLM connector's tenants: views share one store's resources, never its chunks."""

import pytest

import pykvstore as kv
from helpers import block_table, make_cache, tokens

CT = 32  # chunk tokens; block size 8


def test_views_of_one_store_never_hit_each_others_chunks(bucket):
    toks, ids = tokens(64), block_table(8, 24)
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as base:
        a, b = base._with_salt("tenant-a"), base._with_salt("tenant-b")
        assert a.put(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), ids) == 64
        dst = kv.PagedKV(make_cache("BHTC", zero=True), "BHTC")
        assert (a.lookup(toks), b.lookup(toks), base.lookup(toks)) == (64, 0, 0)
        assert b.get(toks, dst, ids) == 0 and base.get(toks, dst, ids) == 0  # not even from the shared host tier
        assert a.get(toks, dst, ids) == 64
        assert set(a.hashes(toks)).isdisjoint(b.hashes(toks))


def test_closing_a_view_leaves_the_store_and_other_views_serving(bucket):
    toks, ids = tokens(64), block_table(8, 24)
    src = kv.PagedKV(make_cache("BHTC"), "BHTC")
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as base:
        a, b = base._with_salt("tenant-a"), base._with_salt("tenant-b")
        with b:  # a careless caller closes one tenant's view
            pass
        with pytest.raises(kv.InputError):
            b.lookup(toks)
        assert base.put(toks, src, ids) == 64 and base.lookup(toks) == 64
        assert a.put_async(toks, src, ids).wait(check=True) == 64 and a.lookup(toks) == 64


def test_a_view_of_a_closed_store_refuses_calls(bucket):
    toks, ids = tokens(64), block_table(8, 24)
    base = kv.KVStore(bucket, model="m", chunk_tokens=CT)
    view = base._with_salt("tenant-a")
    base.close()
    with pytest.raises(kv.InputError):
        view.lookup(toks)
    with pytest.raises(kv.InputError):
        view.put_async(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), ids)
