"""A chunk fetched from Redis lands in the local bucket under the store's own model, or not at all."""

import shutil
import time
from pathlib import Path

import pytest

import pykvstore as kv
from pykvstore.chunk_file import decode_header, encode_header
from redis_servers import RedisServer
from workers import load_verified, open_store, sequence

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (.ci/run installs it)")


def test_a_remote_chunk_naming_another_model_is_not_indexed_under_it(tmp_path: Path):
    """Its key, namespace and checksum are sound, so the load may use it; but landed, its row would
    charge another model's quota (make_room evicting that model's chunks) and point at a path no
    read looks in, leaving an orphan file."""
    s = RedisServer(workdir=tmp_path / "redis")
    try:
        with open_store(str(tmp_path / "a"), remote=s.url) as a:
            toks, cache, ids = sequence(1)
            assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
            keys = a.hashes(toks)
            assert a._remote.flush(30)
        r = redis.Redis.from_url(s.url)
        for k in keys:  # anyone who can write to the server can rename the model in a header
            v = r.get(f"pykvstore:{{{k}}}")
            hdr = decode_header(v, len(v))
            payload = bytes(v[hdr.payload_offset : hdr.payload_offset + hdr.nbytes])
            r.set(f"pykvstore:{{{k}}}", encode_header(dict(hdr.metadata, model="victim/model"), hdr.dtype,
                                                      hdr.shape, hdr.nbytes) + payload)
        with open_store(str(tmp_path / "b"), remote=s.url) as b:
            load_verified(b, 1)
            b._worker("put").submit(time.time).result()  # landing has run
            assert [m for (m,) in b._catalog.query("SELECT model FROM chunks") if m != "mp/model"] == []
    finally:
        s.close()
