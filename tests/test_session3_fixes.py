"""Fixes from this session's review: out of memory while landing a remote chunk, strict settings."""

from __future__ import annotations

import errno
import shutil

import pytest

import pykvstore as kv
from pykvstore import affinity
from pykvstore.errors import InputError
from redis_servers import RedisServer
from workers import load_verified, open_store, sequence


def test_cpu_sets_given_as_bytes_are_refused():
    """bytes iterate as byte values: b"2" would have named CPU 50."""
    for spec in (b"2", bytearray(b"0-1"), memoryview(b"1")):
        with pytest.raises(InputError, match="io_cpus"):
            affinity.parse_cpus(spec)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (.ci/run installs it)")
def test_no_memory_to_land_a_remote_chunk_ends_the_load_as_a_miss(tmp_path, monkeypatch):
    """A remote chunk is copied into an aligned buffer before it is verified; when that allocation
    fails (pool full, heap refused) the load ends there, reported on the handle, and nothing
    escapes get into the engine; with memory back the same chunks load."""
    pytest.importorskip("redis")
    from pykvstore.store import remote

    server = RedisServer(workdir=tmp_path / "redis")
    try:
        toks, cache, ids = sequence(3)
        with open_store(str(tmp_path / "a"), remote=server.url) as a:
            assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
        with open_store(str(tmp_path / "b"), remote=server.url) as b:
            real = remote._C

            class NoMemory:
                def __getattr__(self, name):
                    return getattr(real, name)

                @staticmethod
                def AlignedBuffer(*args, **kwargs):  # noqa: N802 - the name the code calls
                    raise MemoryError

            monkeypatch.setattr(remote, "_C", NoMemory())
            h = b.get_async(toks, kv.PagedKV(cache, "BHTC"), ids)
            assert h.wait() == 0
            assert [e.errno for e in h.errors] == [errno.ENOMEM]
            monkeypatch.setattr(remote, "_C", real)
            assert load_verified(b, 3) == 96
    finally:
        server.close()
