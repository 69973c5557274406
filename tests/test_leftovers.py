"""Correctness leftovers of the reviews: bools as tokens, a catalog row no chunk path can be
derived for, and a failed or uncommitted write deleting another writer's file.

Each test failed before its fix. Faults are real (a crafted catalog row, a second store on
the bucket, the engine's own write-fault switch); a pause hook only times them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import pykvstore as kv
from pykvstore.keys import as_tokens
from workers import load_verified, open_store, sequence


def args(seed: int):
    toks, cache, ids = sequence(seed)
    return toks, kv.PagedKV(cache, "BHTC"), ids


def data_files(root: Path) -> list[Path]:
    return sorted((root / "data").rglob("*.safetensors"))


def rows(store) -> dict[str, int]:
    """key -> state of every row in the catalog."""
    return dict(store._catalog.query("SELECT key, state FROM chunks"))


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
