"""The catalog and bucket.json as found on disk: an empty catalog is rebuilt, a bad config is a clear error."""

from __future__ import annotations

import json

import pytest

import pykvstore as kv
from test_faults import put_three


def test_a_zero_length_catalog_is_rebuilt_from_the_files(bucket):
    toks, paths = put_three(bucket)
    for suffix in ("-wal", "-shm"):
        (bucket / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    (bucket / "catalog.sqlite").write_bytes(b"")
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        assert s.lookup(toks) == 96 and s.stats().chunks == 3
    with kv.Bucket(bucket) as b:
        assert b.fsck()["problems"] == 0


@pytest.mark.parametrize("text", [
    "{", "[]", "null", '"capacity"', '{"capacity": "lots"}', '{"capacity": -1}', '{"capacity": 0.5}',
    '{"capacity": 1e400}', '{"capacity": NaN}', '{"capacity": 1024, "quotas": []}',
    '{"capacity": 1024, "quotas": {"m": -5}}', '{"capacity": 1024, "default_ttl": "never"}',
    '{"capacity": 1024, "ttl_mode": "sometimes"}', "[" * 100_000 + "]" * 100_000, "\xff\xfe",
])
def test_a_malformed_bucket_json_is_a_clear_error(bucket, text):
    put_three(bucket)
    (bucket / "bucket.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(kv.InputError, match="bucket.json"):
        kv.Bucket(bucket)
    assert (bucket / "bucket.json").read_bytes() == text.encode("latin-1")  # left for the owner to fix


@pytest.mark.parametrize("capacity", [-1, "-1", "-5GiB"])
def test_a_negative_capacity_is_refused(bucket, capacity):
    with pytest.raises(kv.InputError):
        kv.Bucket(bucket, capacity=capacity)


def test_a_bucket_json_broken_while_serving_never_fails_a_put(bucket, caplog):
    """An owner's hand edit that leaves bucket.json malformed while an engine runs: puts keep
    the last good settings (and say so once); opening the bucket still names the problem."""
    from workers import sequence
    with kv.KVStore(bucket, model="m", chunk_tokens=32, ttl="1h") as s:
        toks, cache, ids = sequence(1)
        good = (bucket / "bucket.json").read_bytes()
        (bucket / "bucket.json").write_text('{"capacity": 1024, "default_ttl": "7d"}')
        with caplog.at_level("WARNING", logger="pykvstore"):
            assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
            assert s.put_async(toks[:64], kv.PagedKV(cache, "BHTC"), ids).wait() == 64
        assert sum("keeping the last good settings" in r.getMessage() for r in caplog.records) == 1
        assert s.lookup(toks) == 96
        now = __import__("time").time()
        assert all(now < r.expires <= now + 3600 for r in s.bucket.catalog.rows())  # the last good ttl, 1h
        with pytest.raises(kv.InputError, match="default_ttl"):
            kv.Bucket(bucket)
        (bucket / "bucket.json").write_bytes(good)
    with kv.Bucket(bucket) as b:
        assert b.stats().chunks == 3
