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
