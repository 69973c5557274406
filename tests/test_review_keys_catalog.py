"""Hostile review of the native chunk keys (20b8dc8), the one-statement prefix query (003c7e9)
and the after-commit unlinks (93d5742, 83705ef): inputs a careless caller or a crafted row can
hand these paths, each checked against the definition it must match (chunk_keys_py, and
ready_prefix_len_in, the IN-list statements that bind every key as it is)."""

from __future__ import annotations

import errno
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pykvstore as kv
from pykvstore.catalog import READY, WRITING, Catalog, ChunkRow
from pykvstore.keys import chunk_keys, chunk_keys_hex, chunk_keys_py, namespace_digest
from workers import CT, args as _args, load_verified, open_store, sequence

ROOT = namespace_digest({"model": "m"})


# --- keys: what the native chain gets must be what the reference gets -----------------------

@pytest.mark.parametrize("shape", [(8, 8), (2, 4, 8), ()])
def test_tokens_that_are_not_1d_are_refused_by_both_derivations(shape):
    """A 2-D array used to give the native chain one key per chunk of all its elements while
    the reference counted rows (8 keys against 1 for chunk_tokens=8), and a 0-d array a key
    from the native chain but a TypeError from the reference: keys that disagree are keys two
    processes would not share. Both now refuse anything but 1-D tokens by name."""
    toks = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    for derive in (chunk_keys, chunk_keys_hex, chunk_keys_py):
        with pytest.raises(kv.TokensError, match="1-D"):
            derive(ROOT, toks, 8)
    # Fortran order too: nothing reaches the native call that the reference would not read the same
    with pytest.raises(kv.TokensError, match="1-D"):
        chunk_keys(ROOT, np.asfortranarray(np.arange(64, dtype=np.uint32).reshape(8, 8)), 8)


@pytest.mark.parametrize("chunk_tokens", [2**40, 2**62, 2**62 + 1, 2**64, np.uint64(2**63)])
def test_a_chunk_longer_than_any_prompt_gives_no_keys_like_the_reference(chunk_tokens):
    """chunk_tokens * 4 past 2**64 did not fit the binding's size_t: a TypeError whose message
    printed the whole token array, where the reference answers [] (no full chunk)."""
    toks = np.arange(100, dtype=np.uint32)
    assert chunk_keys_py(ROOT, toks, chunk_tokens) == []
    assert chunk_keys(ROOT, toks, chunk_tokens) == []
    assert chunk_keys_hex(ROOT, toks, chunk_tokens) == []


def test_a_store_with_a_huge_chunk_answers_its_hashes_as_empty(tmp_path):
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=2**62, capacity="1GiB",
                    geometry=kv.Geometry(3, 4, 16, "bfloat16")) as s:
        assert s.hashes(list(range(100))) == []
        assert s.lookup(list(range(100))) == 0


def test_every_dtype_order_and_stride_gives_the_reference_keys():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**31, 96)
    arrays = [base.astype(dt) for dt in ("<u4", ">u4", "<i8", ">i8", ">u8", "<i4")]
    arrays += [(base % 250).astype(dt) for dt in ("u1", "<u2", ">u2")]
    arrays += [base.astype("<u4")[::2], base.astype("<u4")[::-1], base.astype(">u4")[::3], np.empty(0, "<u4")]
    ro = base.astype("<u4")
    ro.flags.writeable = False
    arrays.append(ro)
    for a in arrays:
        for ct in (1, 2, 3, 5, 16, 96, 97):
            ref = chunk_keys_py(ROOT, a, ct)
            assert chunk_keys(ROOT, a, ct) == ref, (a.dtype, a.strides, ct)
            assert chunk_keys_hex(ROOT, a, ct) == [k.hex() for k in ref]


# --- the prefix query: the JSON array must never read a key as another -----------------------

def _catalog(tmp_path, keys_states) -> Catalog:
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    cat.insert_many(ChunkRow(key=k, parent="ns", namespace="ns", model="m", chunk_index=i, tokens=16, nbytes=1,
                             path=f"data/{i}", created=0.0, last_access=0.0, state=st, expires=exp)
                    for i, (k, st, exp) in enumerate(keys_states))
    return cat


def test_a_key_with_a_nul_is_never_read_as_the_shorter_key_before_it(tmp_path):
    """json.dumps writes NUL as \\u0000 and SQLite's json_each cut the value there: the key
    'a\\0zzz' was answered as held because 'a' is (over-reporting: get could not load it), and a
    held 'b\\0c' was answered as missing."""
    cat = _catalog(tmp_path, [("a", READY, None), ("b\x00c", READY, None)])
    try:
        assert cat.ready_prefix_len(["a\x00zzz"], 1.0) == cat.ready_prefix_len_in(["a\x00zzz"], 1.0) == 0
        assert cat.ready_prefix_len(["b\x00c"], 1.0) == 1
        assert cat.ready_prefix_len(["a", "b\x00c", "a\x00"], 1.0) == 2
    finally:
        cat.close()


def test_the_json_statement_agrees_with_the_in_lists_on_any_keys(tmp_path):
    """Random keys over every ASCII character and a few others (NUL, controls, quotes,
    backslashes, BOM, line separator, an emoji, number- and literal-looking text), ready,
    writing, expired or absent, in random orders with duplicates."""
    rnd = random.Random(5)
    alpha = [chr(i) for i in range(128)] + ["é", "\u2028", "\U0001F600", "\ufeff"]
    keys = list(dict.fromkeys(["".join(rnd.choice(alpha) for _ in range(rnd.randint(0, 6))) for _ in range(300)]
                              + ["0123", "1e5", "null", "true", "[1]", "{}", " ", "0", "-0"]))
    states = []
    for k in keys:
        r = rnd.random()
        if r < 0.8:
            states.append((k, READY if r < 0.7 else WRITING, rnd.choice([None, None, None, 5.0, 15.0])))
    cat = _catalog(tmp_path, states)
    try:
        for _ in range(1500):
            q = [rnd.choice(keys) for _ in range(rnd.randint(0, 8))]
            assert cat.ready_prefix_len(q, 10.0) == cat.ready_prefix_len_in(q, 10.0), q
    finally:
        cat.close()


# --- releases retried later must release this store's reservation only -----------------------

def _rows(store) -> dict[str, int]:
    return dict(store._catalog.query("SELECT key, state FROM chunks"))


def test_a_retried_release_never_drops_another_writers_reservation(bucket):
    """Store a's commit and release of a chunk both fail (another connection holds the
    catalog's write lock): its reservation stays, to be released before a's next put. An
    evict removes it meanwhile and store b reserves and writes the same key. a's retried
    release deleted b's reservation (any `writing` row of that key), so b's commit found no
    row and b's put answered 0 with nothing stored; it now releases a's own reservation only."""
    toks, cache, ids = _args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as b:
        a._catalog._conn.execute("PRAGMA busy_timeout = 50")  # give up on the held lock in 50 ms, not 60 s
        holder = sqlite3.connect(bucket / "catalog.sqlite", isolation_level=None, timeout=5)
        real_a = a._disk.write

        def write_then_lock(rel, buf, size):  # the real write; the lock is taken once it is in place
            fut = real_a(rel, buf, size)
            fut.result()
            holder.execute("BEGIN IMMEDIATE")
            return fut

        a._disk.write = write_then_lock
        try:
            assert a.put(toks[:CT], cache, ids) == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            del a._disk.write
        (k0,) = a._puts._unreleased
        assert _rows(a) == {k0: WRITING}
        assert b.evict(toks) > 0 and _rows(b) == {}  # the stale reservation goes with its chain

        real_b, answers = b._disk.write, []

        def write_while_a_puts(rel, buf, size):  # a's next put runs while b's first chunk is in flight
            fut = real_b(rel, buf, size)
            if not answers:
                fut.result()
                answers.append(a.put(*_args(2)))
            return fut

        b._disk.write = write_while_a_puts
        try:
            assert b.put(toks, cache, ids) == 3 * CT
        finally:
            del b._disk.write
        assert answers == [3 * CT] and a._puts._unreleased == set()
        assert set(_rows(b).values()) == {READY} and len(_rows(b)) == 6
        assert b.lookup(toks) == 3 * CT and load_verified(b, 1) == 3 * CT


# --- a process that dies between an eviction's commit and its unlinks -------------------------

_DIE_AFTER_COMMIT = """
import os, sys
sys.path.insert(0, {tests!r})
import pykvstore as kv
from workers import open_store, sequence
toks, cache, ids = sequence(1)
s = open_store({bucket!r})
assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
cat = s.bucket.catalog
real = cat.after_commit
cat.after_commit = lambda fn: real(lambda: os._exit(3))  # killed once the deletes are committed
s.bucket.clear()
"""


def test_chunks_cleared_by_a_process_killed_before_its_unlinks_stay_gone(bucket):
    """A clear (or any eviction) commits its deletes, then unlinks the files: a process killed
    in between left the chunk files in data/ with no row. Nothing counted or reclaimed them,
    and fsck --repair indexed them again: the cleared chunks came back (lookup 96). The files
    of deleted rows are now out of data/ before the commit, as temp files of the live writer,
    so the next open reclaims them as a dead writer's leftovers."""
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", _DIE_AFTER_COMMIT.format(tests=tests, bucket=str(bucket))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    with open_store(str(bucket)) as s:
        toks = sequence(1)[0]
        assert s.lookup(toks) == 0
        report = s.bucket.fsck(repair=True)
        assert report["unindexed"] == [] and s.lookup(toks) == 0
        assert sorted((bucket / "data").rglob("*.safetensors")) == []
        assert list((bucket / "tmp").iterdir()) == []


# --- a drop retried later must not take chunks another writer has made reachable -----------

def test_a_retried_drop_keeps_chunks_another_store_made_reachable(bucket, one_io_thread):
    """Store a's write of chunk 1 fails, chunk 2 is committed, and dropping chunk 2
    (unreachable) fails on a locked catalog: it is retried before a's next put. Store b puts
    the same sequence meanwhile, fills chunk 1 and answers 96, and lookup says 96. a's retried
    drop deleted chunk 2 anyway (lookup fell to 64 under b's answer); a drop now takes only
    chunks whose parent is still missing."""
    toks, cache, ids = _args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as b:
        a._catalog._conn.execute("PRAGMA busy_timeout = 50")
        holder = sqlite3.connect(bucket / "catalog.sqlite", isolation_level=None, timeout=5)
        real = a.bucket.mark_ready

        def mark_ready(key, now, owner=None):  # the real commit; the lock is taken once chunk 2 is committed
            ok = real(key, now, owner)
            if key == a.hashes(toks)[2]:
                holder.execute("BEGIN IMMEDIATE")
            return ok

        a.bucket.mark_ready = mark_ready
        a.bucket.engine.inject_faults("write", 2, errno.ENOSPC)  # a's 2nd write: chunk 1
        try:
            assert a.put(toks, cache, ids) == CT
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            a.bucket.engine.inject_faults("write", 0)
            del a.bucket.mark_ready
        keys = a.hashes(toks)
        assert a._puts._undropped == {keys[2]}
        assert b.put(toks, cache, ids) == 3 * CT and b.lookup(toks) == 3 * CT
        assert a.put(*_args(2)) == 3 * CT  # retries the drop first
        assert a._puts._undropped == set()
        assert b.lookup(toks) == 3 * CT and load_verified(b, 1) == 3 * CT
        assert len(_rows(a)) == 6 and len(sorted((bucket / "data").rglob("*.safetensors"))) == 6
