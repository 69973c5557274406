"""Correctness leftovers of the reviews: bools as tokens, a catalog row no chunk path can be
derived for, and a failed or uncommitted write deleting another writer's file.

Each test failed before its fix. Faults are real (a crafted catalog row, a second store on
the bucket, the engine's own write-fault switch); a pause hook only times them.
"""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest

import pykvstore as kv
from pykvstore.catalog import READY
from pykvstore.keys import as_tokens
from workers import args, data_files, load_verified, open_store, rows


def warned(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --- 1. bools are not token ids --------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    [True, False], [1, True], (True, 2), [5, False, 7], [np.True_, 1], (np.bool_(False), 3),
    np.array([True, False]), np.array([1, True], dtype=object), np.array([True, 2**40], dtype=object),
])
def test_bools_are_refused_as_tokens_in_every_form(bad):
    """A list or tuple mixing bools with ints became int64 in numpy and was taken (True as
    token 1), where an object array holding the same items was refused: bools are not token
    ids in any form, and the error says so."""
    with pytest.raises(kv.TokensError, match="bool"):
        as_tokens(bad)


def test_ints_beside_the_bool_check_still_convert():
    """What the bool check must not refuse: numpy ints in a list (the generic path), plain
    ints (the native path), 0 and 1 included."""
    assert as_tokens([0, 1, 2]).tolist() == [0, 1, 2]
    assert as_tokens([np.int64(1), 0, np.uint32(7)]).tolist() == [1, 0, 7]
    assert as_tokens(np.array([1, 0, 2**40 - 2**40 + 5], dtype=object)).tolist() == [1, 0, 5]


# --- 2. a catalog row no chunk path can be derived for ----------------------------------------

def _crafted(bucket, index: int) -> str:
    """Sequence 1 stored, then its chunk `index`'s row given the namespace 'hex\\n' (no digest,
    so no chunk path): the key of that row."""
    with open_store(str(bucket)) as s:
        assert s.put(*args(1)) == 96
    with kv.Bucket(bucket) as b:
        with b.catalog.transaction() as c:
            c.execute("UPDATE chunks SET namespace = namespace || char(10) WHERE chunk_index = ?", (index,))
        return b.catalog.rows("chunk_index = ?", (index,))[0].key


@pytest.mark.parametrize("index", [0, 1])
def test_get_treats_a_row_with_no_digest_namespace_as_a_damaged_chunk(bucket, index, caplog):
    """Such a row made every get of its prompt fail ('get failed', 0 loaded, the held prefix
    before it lost too) while lookup kept reporting it held, until fsck ran. get now ends the
    load there as at a damaged chunk: the prefix before it is served, the row and its tail
    are dropped, and lookup agrees from then on."""
    bad = _crafted(bucket, index)
    toks = args(1)[0]
    with open_store(str(bucket)) as s:
        assert s.lookup(toks) == 96  # what the catalog says before anything reads it
        assert load_verified(s, 1) == 32 * index
        assert not warned(caplog, "get failed")
        assert s.lookup(toks) == 32 * index and bad not in rows(s) and len(rows(s)) == index
        assert load_verified(s, 1) == 32 * index
        assert s.put(*args(1)) == 96 and load_verified(s, 1) == 96  # the store heals with the next put


def test_chunks_behind_a_row_with_no_digest_namespace_can_still_be_cleared(bucket):
    """Removing such a row (clear, evict, a capacity eviction) derived its file's path and
    raised UnsafePath out of the transaction: nothing could be cleared. The row has no file of
    its own, so it goes alone; its tail's files go with their rows."""
    _crafted(bucket, 1)
    with open_store(str(bucket)) as s:
        assert s.clear().chunks == 3
        assert rows(s) == {} and s.lookup(args(1)[0]) == 0
        assert len(data_files(bucket)) == 1  # chunk 1's own file: no row names it (fsck --repair indexes it)


# --- 3. a writer whose reservation was taken deletes only its own file ---------------------

def _evict_then_other_stores(a, other, b, toks, cache, ids, *, wait_own: bool):
    """Pause hook on a's first chunk write: `other` evicts the sequence (a's reservation goes),
    then b stores it whole (b reserves, writes and commits chunk 0 at the path a writes to).
    wait_own: a's write lands first (b's file then replaces it); else a's write starts after."""
    real = a._disk.write
    done = []

    def write(rel, buf, size):
        if done:
            return real(rel, buf, size)
        done.append(other.evict(toks))
        if wait_own:
            fut = real(rel, buf, size)
            fut.result()  # a's file is in place, its commit still to come
            done.append(b.put(toks, cache, ids))
            return fut
        done.append(b.put(toks, cache, ids))
        return real(rel, buf, size)

    a._disk.write = write
    return done


def _fresh_get(bucket) -> int:
    with open_store(str(bucket)) as c:  # nothing in host memory: the files are what is read
        return load_verified(c, 1)


def test_an_uncommitted_write_leaves_the_file_another_store_committed_at_its_path(bucket):
    """a's reservation is evicted while a writes chunk 0, then b stores the sequence (its chunk
    0 file replaces a's). a's commit finds no reservation of its own and removed whatever file
    was at the path: b's committed chunk 0, leaving a ready row with no file (lookup 96, get 0)."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as other, open_store(str(bucket)) as b:
        done = _evict_then_other_stores(a, other, b, toks, cache, ids, wait_own=True)
        a.put(toks, cache, ids)
        assert done[1] == 96
        assert set(rows(b).values()) == {READY} and len(rows(b)) == 3
        assert len(data_files(bucket)) == 3
        assert b.lookup(toks) == 96
    assert _fresh_get(bucket) == 96


def test_a_failed_write_leaves_the_file_another_store_committed_at_its_path(bucket):
    """The same race, but a's write fails (ENOSPC from its engine): forget() removed the file at
    the path, b's committed chunk 0, before releasing a reservation that was no longer a's."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as other, open_store(str(bucket)) as b:
        a.bucket.engine.inject_faults("write", 1, errno.ENOSPC)  # every write of a fails
        try:
            done = _evict_then_other_stores(a, other, b, toks, cache, ids, wait_own=False)
            assert a.put(toks, cache, ids) == 0
        finally:
            a.bucket.engine.inject_faults("write", 0)
        assert done[1] == 96
        assert set(rows(b).values()) == {READY} and len(rows(b)) == 3
        assert len(data_files(bucket)) == 3 and b.lookup(toks) == 96
    assert _fresh_get(bucket) == 96


def test_a_failed_or_uncommitted_write_still_removes_its_own_file(bucket):
    """What the fix must keep: with no other writer, a's file goes when its reservation was
    evicted under it (no orphan file), and a failed write leaves no file and no row."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as other:
        real = a._disk.write

        def write(rel, buf, size):
            if a._disk.write is write:
                a._disk.write = real
                other.evict(toks)
                fut = real(rel, buf, size)
                fut.result()  # a's file is in place; its commit will find no row
                return fut
            return real(rel, buf, size)

        a._disk.write = write
        assert a.put(toks, cache, ids) == 0
        assert data_files(bucket) == [] and rows(a) == {} and list((bucket / "tmp").iterdir()) == []
        a.bucket.engine.inject_faults("write", 1, errno.ENOSPC)
        try:
            assert a.put(toks, cache, ids) == 0
        finally:
            a.bucket.engine.inject_faults("write", 0)
        assert data_files(bucket) == [] and rows(a) == {} and list((bucket / "tmp").iterdir()) == []
        assert a.put(toks, cache, ids) == 96 and _fresh_get(bucket) == 96
