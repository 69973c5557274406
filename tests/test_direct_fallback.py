"""An O_DIRECT read the file system refuses (EINVAL) falls back to a read
through the page cache, and that retry really is one: the descriptor the
engine opened with O_DIRECT must not refuse the unpadded length again."""

from __future__ import annotations

import errno

import numpy as np
import pytest

import pykvstore as kv
from pykvstore import _C
from helpers import block_table, make_cache, reference, tokens

AUTO, ON = 1, 2  # the engine's direct modes


def _file(tmp_path, size: int):
    path = tmp_path / "f.bin"
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    engine = _C.FileEngine(1)
    engine.read(str(path), AUTO, 1 << 20, False).result()
    if engine.counters()["direct_reads"] != 1:
        pytest.skip("this file system takes no O_DIRECT reads (tmpfs)")
    return path, data


@pytest.mark.parametrize("size", [5000, 4096 * 3 + 7, 12288])
def test_a_refused_direct_read_is_read_again_through_the_page_cache(tmp_path, size):
    path, data = _file(tmp_path, size)
    engine = _C.FileEngine(1)
    engine.inject_faults("refuse_direct", 1)
    res = engine.read(str(path), AUTO, 1 << 20, False).result()
    assert bytes(res.buffer) == data
    c = engine.counters()
    assert (c["direct_fallbacks"], c["buffered_reads"], c["direct_reads"], c["errors"]) == (1, 1, 0, 0)


def test_direct_on_does_not_fall_back(tmp_path):
    path, _ = _file(tmp_path, 5000)
    engine = _C.FileEngine(1)
    engine.inject_faults("refuse_direct", 1)
    with pytest.raises(OSError) as e:
        engine.read(str(path), ON, 1 << 20, False).result()
    assert e.value.errno == errno.EINVAL
    engine.inject_faults("refuse_direct", 0)
    assert engine.read(str(path), ON, 1 << 20, False).result().buffer is not None


def test_a_store_whose_direct_reads_are_refused_still_loads_every_chunk(tmp_path):
    """A sound chunk whose O_DIRECT read is refused is loaded, not quarantined as damaged."""
    defaults_before = kv.defaults.get("direct_read")
    kv.defaults.set(direct_read="auto")
    try:
        src, dst = make_cache("BHTC", seed=1), make_cache("BHTC", seed=2)
        toks, a, b = tokens(96), block_table(12, 24, seed=3), block_table(12, 24, seed=4)
        with kv.KVStore(tmp_path / "bucket", model="m", chunk_tokens=32) as s:
            assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 96
        with kv.KVStore(tmp_path / "bucket", model="m", chunk_tokens=32, host_capacity=0) as s:
            s.bucket.engine.inject_faults("refuse_direct", 1)
            assert s.get(toks, kv.PagedKV(dst, "BHTC"), b) == 96
            st = s.stats()
            assert st.corrupt_chunks == 0 and st.io["direct_fallbacks"] >= 3
        assert (reference(dst, "BHTC", b, 8, 0, 96) == reference(src, "BHTC", a, 8, 0, 96)).all()
    finally:
        kv.defaults.set(direct_read=defaults_before)
