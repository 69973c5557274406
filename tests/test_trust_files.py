"""Catalog rows cannot point outside the bucket: a chunk's path is derived, never trusted.

A catalog row whose `path` is absolute or climbs out with `../` is what a
careless tool, a bad merge or an attacker with write access to catalog.sqlite
leaves behind. No operation may delete, move or read through it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

import pykvstore as kv
from helpers import block_table, make_cache
from test_faults import put_three

WRITING = 0


def plant(bucket, victim, how, key_index=1, state=None):
    """Points one chunk row's path at `victim` (absolute or with ../), optionally marks it writing by a dead pid."""
    con = sqlite3.connect(bucket / "catalog.sqlite")
    keys = [k for (k,) in con.execute("SELECT key FROM chunks ORDER BY chunk_index")]
    path = str(victim) if how == "absolute" else os.path.relpath(victim, bucket)
    con.execute("UPDATE chunks SET path = ? WHERE key = ?", (path, keys[key_index]))
    if state == "dead_writer":
        import socket

        con.execute("UPDATE chunks SET state = ?, owner = ? WHERE key = ?",
                    (WRITING, f"{socket.gethostname()}:{2**22 + 12345}", keys[key_index]))
    con.commit()
    con.close()
    return keys


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious")
    return v


@pytest.mark.parametrize("how", ["absolute", "relative"])
@pytest.mark.parametrize("op", ["evict", "clear_all", "gc", "resize", "fsck_repair", "get", "stats_dead_writer"])
def test_no_operation_touches_a_path_outside_the_bucket(tmp_path, victim, how, op):
    bucket = tmp_path / "bucket"
    toks, paths = put_three(bucket)
    plant(bucket, victim, how, state="dead_writer" if op == "stats_dead_writer" else None)
    if op == "gc":
        con = sqlite3.connect(bucket / "catalog.sqlite")
        con.execute("UPDATE chunks SET expires = 1")
        con.commit()
        con.close()
    if op in ("evict", "get"):
        with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
            if op == "evict":
                s.evict(toks)
            else:
                got = s.get(toks, kv.PagedKV(make_cache("BHTC", seed=9), "BHTC"), block_table(12, 24, 4))
                assert got in (32, 96)  # never an exception; chunk 1 is served only from its own file
    elif op == "stats_dead_writer":  # a read-only command: recovery of the "dead writer" runs on open
        r = subprocess.run([sys.executable, "-m", "pykvstore", "stats", str(bucket)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    else:
        with kv.Bucket(bucket) as b:
            if op == "clear_all":
                b.clear(include_pinned=True)
            elif op == "gc":
                b.gc()
            elif op == "resize":
                b.resize(1)
            else:
                b.fsck(repair=True)
    assert victim.read_text() == "precious"
    assert not any((bucket / "quarantine").glob("*victim*"))


def test_bucket_json_is_saved_without_following_a_planted_link(tmp_path, victim):
    bucket = tmp_path / "bucket"
    kv.Bucket(bucket).close()
    for pid_guess in range(os.getpid(), os.getpid() + 50):  # the old predictable temp name
        os.symlink(victim, bucket / f"bucket.json.{pid_guess}.tmp")
    with kv.Bucket(bucket) as b:
        b.resize("1GiB")
        b.set_defaults(ttl="1h")
    assert victim.read_text() == "precious"
    assert kv.Bucket(bucket).capacity == 1 << 30
