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
