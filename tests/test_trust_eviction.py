"""Eviction removes rows and files together: a resize below the pinned bytes says so and strands nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pykvstore as kv
from workers import open_store, sequence


def fill(bucket):
    with open_store(str(bucket), capacity="1GiB") as s:
        for seed in (1, 2, 3):
            toks, cache, ids = sequence(seed)
            assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids, tag=f"t{seed}") == 96
    with kv.Bucket(bucket) as b:
        where, args = b.select(tag="t1")
        keys = [k for (k,) in b.catalog.query(f"SELECT key FROM chunks WHERE {where}", args)]
        assert b.pin(keys) == 3
        return b.stats().pinned_bytes


def consistent(bucket):
    """Every chunk file has its row and every row its file."""
    with kv.Bucket(bucket) as b:
        report = b.fsck()
        files = sorted(p for p in (bucket / "data").rglob("*.safetensors"))
        return report["problems"] == 0 and len(files) == b.stats().chunks


def test_a_resize_below_the_pinned_bytes_evicts_what_it_can_and_says_what_is_pinned(bucket, caplog):
    pinned = fill(bucket)
    with kv.Bucket(bucket) as b:
        removed = b.resize(1)
        assert removed.chunks == 6  # every unpinned chunk, with its file
        assert removed.to_dict()["pinned_bytes"] == pinned and removed.to_dict()["short_bytes"] == pinned - 1
        assert b.stats().chunks == 3 and b.stats().pinned_chunks == 3
    assert consistent(bucket)
    assert any("pinned" in r.getMessage() for r in caplog.records)


def test_the_cli_says_what_was_evicted_and_what_is_pinned(bucket):
    fill(bucket)
    r = subprocess.run([sys.executable, "-m", "pykvstore", "resize", str(bucket), "1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "evicted 6 chunks" in out and "pinned" in out
    assert consistent(bucket)


def test_a_quota_below_the_pinned_bytes_strands_nothing(bucket):
    fill(bucket)
    with kv.Bucket(bucket) as b:
        removed = b.set_quota("mp/model", 1)
        assert removed.chunks == 6
    assert consistent(bucket)


def test_opening_a_bucket_configured_below_its_pinned_bytes_strands_nothing(bucket):
    fill(bucket)
    config = json.loads((bucket / "bucket.json").read_text())
    config["capacity"] = 1
    (bucket / "bucket.json").write_text(json.dumps(config))
    with kv.Bucket(bucket) as b:  # the open-time repair shrinks to fit as far as pins allow
        assert b.stats().chunks == 3
    assert consistent(bucket)


@pytest.mark.parametrize("policy", ["lru", "cost"])
def test_a_put_that_cannot_make_room_leaves_rows_and_files_together(bucket, policy):
    fill(bucket)
    with kv.Bucket(bucket) as b:
        b.resize(1)
    with open_store(str(bucket), policy=policy) as s:
        toks, cache, ids = sequence(9)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 0  # no room: pinned chunks fill the bucket
    assert consistent(bucket)
