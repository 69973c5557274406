"""Review of the SIGBUS guard (2c261e6, 283816b), the native prefault (b89cebd) and
Bucket.release / ready_prefix (28f26d6, 69e9b65, ddab0fd): the cases found broken.
"""

from __future__ import annotations

import numpy as np
import pytest

from pykvstore import _C


@pytest.mark.parametrize("make_view", [
    pytest.param(lambda base: base[:32][::-1], id="reversed"),
    pytest.param(lambda base: base[::2], id="every-second"),
])
def test_copy_to_refuses_a_destination_that_is_not_contiguous(tmp_path, make_view):
    """MapResult.copy_to memcpy'd nbytes from the view's first element: a reversed view
    (its address is its last byte in memory) was written past its end, into whatever
    follows it (31 bytes past a 32-byte view here; past a bytearray's end, the heap), and a
    strided one got the file's bytes in the wrong places. A view the copy cannot fill as
    one run is refused, and nothing around it is written."""
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 16
    path.write_bytes(data)
    r = _C.FileEngine(1).map(str(path), 1 << 20, False).result()
    assert r.size == len(data)
    base = np.full(64, 0xEE, np.uint8)
    view = make_view(base)
    with pytest.raises(ValueError, match="contiguous"):
        r.copy_to(view, 0, 32)
    assert (base == 0xEE).all()
    # a contiguous destination still gets the bytes
    ok = np.zeros(32, np.uint8)
    r.copy_to(ok, 16, 32)
    assert ok.tobytes() == data[16:48]


# --- a catalog row whose model is no text ------------------------------------------------------

def _crafted_model(bucket, index: int) -> str:
    """Sequence 1 stored, then its chunk `index`'s row given its model as a BLOB (SQLite keeps
    a blob as it is in a TEXT column; Python reads it back as bytes): that row's key."""
    import pykvstore as kv
    from test_leftovers import args
    from workers import open_store

    with open_store(str(bucket)) as s:
        assert s.put(*args(1)) == 96
    with kv.Bucket(bucket) as b:
        with b.catalog.transaction() as c:
            c.execute("UPDATE chunks SET model = CAST(model AS BLOB) WHERE chunk_index = ?", (index,))
        row = b.catalog.rows("chunk_index = ?", (index,))[0]
        assert isinstance(row.model, bytes)
        return row.key


@pytest.mark.parametrize("index", [0, 1])
def test_get_treats_a_row_whose_model_is_no_text_as_a_damaged_chunk(bucket, index, caplog):
    """ddab0fd made a row no chunk path can be derived for a damaged chunk, but only one that
    raises UnsafePath: a model read back as bytes raised TypeError from model_slug out of
    ready_prefix, so every get of the prompt failed ('get failed', 0 loaded) while lookup said
    held. It ends the prefix like the 'hex\\n' namespace does."""
    from test_leftovers import args, rows, warned
    from workers import load_verified, open_store

    bad = _crafted_model(bucket, index)
    with open_store(str(bucket)) as s:
        assert s.lookup(args(1)[0]) == 96
        assert load_verified(s, 1) == 32 * index
        assert not warned(caplog, "get failed")
        assert s.lookup(args(1)[0]) == 32 * index and bad not in rows(s)


def test_chunks_behind_a_row_whose_model_is_no_text_can_still_be_cleared(bucket):
    """Removing such a row derived its path (TypeError, not UnsafePath) inside the
    transaction: clear raised and nothing went."""
    from test_leftovers import args, rows
    from workers import open_store

    _crafted_model(bucket, 1)
    with open_store(str(bucket)) as s:
        assert s.clear().chunks == 3
        assert rows(s) == {} and s.lookup(args(1)[0]) == 0
