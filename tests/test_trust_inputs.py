"""Bad input is a ValueError subclass that names the problem, raised before anything is written."""

from __future__ import annotations

import pytest

import pykvstore as kv
from helpers import block_table, make_cache
from workers import sequence


def files(bucket):
    return sorted(p for p in (bucket / "data").rglob("*.safetensors")) if (bucket / "data").exists() else []


@pytest.mark.parametrize("model", [".", "..", "x" * 600_000, "a\0b", ""])
def test_model_names_that_cannot_be_a_directory_or_a_header_are_refused(bucket, model):
    with pytest.raises(kv.InputError):
        kv.KVStore(bucket, model=model, chunk_tokens=32)
    assert files(bucket) == []


def test_a_tag_too_long_for_a_header_is_refused_before_writing(bucket):
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        toks, cache, ids = sequence(1)
        with pytest.raises(kv.InputError, match="tag"):
            s.put(toks, kv.PagedKV(cache, "BHTC"), ids, tag="t" * 1_100_000)
        assert files(bucket) == [] and s.lookup(toks) == 0
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids, tag="t" * 1000) == 96  # a long, legal tag loads
        dst = make_cache("BHTC", seed=9)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), block_table(12, 24, 4)) == 96


@pytest.mark.parametrize("salt", [3, 0, 2 * 10**9, [], {}, 1.5, object(), "x" * 5000, b"y" * 5000])
def test_salts_other_than_short_str_or_bytes_are_refused(bucket, salt):
    with pytest.raises(kv.InputError, match="salt"):
        kv.KVStore(bucket, model="m", chunk_tokens=32, salt=salt)


def test_salt_rules_str_is_its_utf8_bytes_and_empty_is_none(bucket):
    toks, cache, ids = sequence(2)
    with kv.KVStore(bucket, model="m", chunk_tokens=32, salt="tenant-1") as a:
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    with kv.KVStore(bucket, model="m", chunk_tokens=32, salt=b"tenant-1") as b:
        assert b.lookup(toks) == 96
    with kv.KVStore(bucket, model="m", chunk_tokens=32, salt="tenant-2") as c:
        assert c.lookup(toks) == 0
    with kv.KVStore(bucket, model="m", chunk_tokens=32, salt="") as d, \
            kv.KVStore(bucket, model="m", chunk_tokens=32) as e:
        assert d.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96 and e.lookup(toks) == 96


def test_repeated_block_ids_are_refused(bucket):
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        toks, cache, ids = sequence(3)
        bad = list(ids)
        bad[5] = bad[2]
        with pytest.raises(kv.BlockIdsError, match="repeat"):
            s.put(toks, kv.PagedKV(cache, "BHTC"), bad)
        with pytest.raises(kv.BlockIdsError, match="repeat"):
            s.get(toks, kv.PagedKV(cache, "BHTC"), bad)
        assert files(bucket) == []


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), 10**400, -1, 0, "1e400", "9" * 400])
def test_non_finite_or_huge_ttls_are_refused(bucket, ttl):
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        toks, cache, ids = sequence(4)
        with pytest.raises(kv.InputError, match="ttl"):
            s.put(toks, kv.PagedKV(cache, "BHTC"), ids, ttl=ttl)
        assert files(bucket) == []
    with pytest.raises(kv.InputError):
        kv.KVStore(bucket, model="m", chunk_tokens=32, ttl=ttl)
