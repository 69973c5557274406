"""The Redis tier trusts nothing it reads back, and refills a server that lost its data.

Real redis-server processes (tests/redis_servers.py); a hostile writer is
simply another client of the same server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pykvstore as kv
from pykvstore.errors import InputError
from redis_servers import RedisServer
from workers import check, load_verified, open_store, sequence

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (.ci/run installs it)")
WORKERS = str(Path(__file__).parent / "workers.py")
SECRET = "correct horse battery staple"


@pytest.fixture
def server(tmp_path):
    s = RedisServer(workdir=tmp_path / "redis")
    yield s
    s.close()


def keys_of(tmp_path, seed):
    with open_store(str(tmp_path / "probe")) as p:
        toks, cache, ids = sequence(seed)
        p.put(toks[:32], kv.PagedKV(cache, "BHTC"), ids)
        return p.hashes(toks)


def write_a(tmp_path, url, seed, env=None, **opts):
    if env is not None:  # another process, configured only through its environment
        subprocess.run([sys.executable, WORKERS, "write", str(tmp_path / "a"), str(seed), "1", "-", url],
                       check=True, capture_output=True, env={**os.environ, **env})
        return
    with open_store(str(tmp_path / "a"), remote=url, remote_options=opts or None) as a:
        toks, cache, ids = sequence(seed)
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96


def test_an_oversized_value_is_a_miss_and_is_never_read_whole(tmp_path, server):
    write_a(tmp_path, server.url, 1)
    k1 = keys_of(tmp_path, 1)[1]
    r = redis.Redis.from_url(server.url)
    r.set(f"pykvstore:{{{k1}}}", b"\0" * (64 << 20))  # 64 MiB under a 12 KiB chunk's key
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert load_verified(b, 1) == 32
        st = b.stats().remote
        assert st["bytes_read"] < (4 << 20) and st["rejected"] == 1


def test_a_malformed_namespace_index_is_left_out(tmp_path, server):
    write_a(tmp_path, server.url, 2)
    r = redis.Redis.from_url(server.url)
    index = "pykvstore:namespaces:{mp/model}"
    r.hset(index, mapping={"zz": "not json", "ab" * 16: "[" * 100_000, "cd" * 16: b"\xff\xfe{",
                           "ef" * 16: '{"geometry": {"layers": "x"}}', "01" * 16: '{"geometry": [1, 2]}',
                           "23" * 16: "1e400"})
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert b.lookup(sequence(2)[0]) == 96  # the sound entry still answers
        assert check(b, 2) == 96
    r.delete(index)
    r.rpush(index, "a list, not a hash")
    with open_store(str(tmp_path / "c"), remote=server.url) as c:
        assert c.lookup(sequence(2)[0]) == 0  # nothing to go on, and no exception


def test_one_key_of_the_wrong_type_does_not_rest_the_tier(tmp_path, server):
    write_a(tmp_path, server.url, 3)
    write_a(tmp_path, server.url, 4)
    k1 = keys_of(tmp_path, 3)[1]
    r = redis.Redis.from_url(server.url)
    r.delete(f"pykvstore:{{{k1}}}")
    r.rpush(f"pykvstore:{{{k1}}}", "x")
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert load_verified(b, 3) == 32  # that key alone is a miss
        assert load_verified(b, 4) == 96  # an unrelated prefix right after still comes from Redis
        assert b.stats().remote["errors"] == 0


def test_the_first_put_never_waits_for_a_stopped_server(tmp_path, server):
    opts = {"timeout": 3600}  # a synchronous write would hang for an hour
    with open_store(str(tmp_path / "a"), remote=server.url, remote_options=opts) as a:
        server.pause()
        try:
            toks, cache, ids = sequence(5)
            done = []
            t = threading.Thread(target=lambda: done.append(a.put(toks, kv.PagedKV(cache, "BHTC"), ids)))
            t.start()
            t.join(120)
            assert done == [96]
        finally:
            server.resume()
        assert a._remote.flush(60)
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert check(b, 5) == 96  # the namespace index and the chunks arrived once the server answered


def test_misses_count_only_chunks_asked_for(tmp_path, server):
    with open_store(str(tmp_path / "a"), remote=server.url) as a:
        toks, cache, ids = sequence(6)
        assert a.put(toks[:64], kv.PagedKV(cache, "BHTC"), ids) == 64
    with open_store(str(tmp_path / "b"), remote=server.url, remote_options={"retry_after": 3600}) as b:
        assert load_verified(b, 6) == 64
        assert b.stats().remote["misses"] == 1  # chunk 2, the one asked for and absent
        server.stop()
        assert load_verified(b, 7) == 0  # asked, and the round trip fails: 3 misses; the tier rests
        assert b.stats().remote["misses"] == 1 + 3
        assert load_verified(b, 8) == 0  # resting: nothing is asked, nothing is a miss
        assert b.stats().remote["misses"] == 1 + 3


def test_a_server_that_lost_its_data_is_refilled_by_local_hits(tmp_path, server):
    with open_store(str(tmp_path / "a"), remote=server.url) as a:
        toks, cache, ids = sequence(9)
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
        a._remote.flush(30)
        server.cli("flushall")  # a restart without persistence, or its own eviction
        assert check(a, 9) == 96  # local hits
        a._remote.flush(30)
        assert a.stats().remote["republished"] == 3
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert check(b, 9) == 96 and b.stats().remote["hits"] == 3


def test_a_sliding_ttl_extends_the_remote_expiry(tmp_path, server):
    with open_store(str(tmp_path / "a"), remote=server.url, ttl=3600, ttl_mode="sliding") as a:
        toks, cache, ids = sequence(10)
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
        a._remote.flush(30)
        keys = a.hashes(toks)
        r = redis.Redis.from_url(server.url)
        for k in keys:  # as if most of the hour had passed
            r.pexpire(f"pykvstore:{{{k}}}", 5000)
        assert check(a, 10) == 96
        a._remote.flush(30)
        assert all(r.pttl(f"pykvstore:{{{k}}}") > 3_000_000 for k in keys)


def forge(value: bytes) -> bytes:
    """What anyone with write access can do: keep the header, zero the payload, fix the checksum."""
    from pykvstore import _C
    from pykvstore.chunk_file import decode_header, encode_header

    hdr = decode_header(value, len(value))
    payload = bytes(hdr.nbytes)
    meta = dict(hdr.metadata, checksum=f"{_C.xxh3_64(payload):016x}")
    return encode_header(meta, hdr.dtype, hdr.shape, hdr.nbytes) + payload


def test_with_a_shared_secret_a_forged_value_is_a_miss(tmp_path, server):
    write_a(tmp_path, server.url, 11, env={"PYKVSTORE_REMOTE_SECRET": SECRET})  # the environment variable
    k1 = keys_of(tmp_path, 11)[1]
    r = redis.Redis.from_url(server.url)
    with open_store(str(tmp_path / "b"), remote=server.url, remote_options={"secret": SECRET}) as b:
        assert check(b, 11) == 96  # signed by a, verified by b
    signed = r.get(f"pykvstore:{{{k1}}}")
    r.set(f"pykvstore:{{{k1}}}", forge(signed[:-32]))
    with open_store(str(tmp_path / "c"), remote=server.url, remote_options={"secret": SECRET}) as c:
        assert load_verified(c, 11) == 32  # the forged chunk 1 (and what follows it) is refused
        assert c.stats().remote["rejected"] == 1
    r.set(f"pykvstore:{{{k1}}}", forge(signed[:-32]) + signed[-32:])  # an old tag does not cover new bytes
    with open_store(str(tmp_path / "d"), remote=server.url, remote_options={"secret": SECRET}) as d:
        assert load_verified(d, 11) == 32
    with open_store(str(tmp_path / "e"), remote=server.url, remote_options={"secret": "another secret, 16+"}) as e:
        assert load_verified(e, 11) == 0  # another deployment's secret: nothing verifies


def test_a_short_secret_is_refused(tmp_path, server):
    with pytest.raises(InputError, match="at least 16 bytes"):
        open_store(str(tmp_path / "a"), remote=server.url, remote_options={"secret": "short"})


def test_crafted_headers_from_redis_are_misses_never_exceptions(tmp_path, server):
    import random

    from test_trust_headers import mutants

    write_a(tmp_path, server.url, 12)
    k0 = keys_of(tmp_path, 12)[0]
    r = redis.Redis.from_url(server.url)
    original = r.get(f"pykvstore:{{{k0}}}")
    for i, img in enumerate(mutants(original, random.Random(12), 48)):
        r.set(f"pykvstore:{{{k0}}}", img)
        with open_store(str(tmp_path / f"b{i % 3}"), remote=server.url) as b:
            b.evict(sequence(12)[0])  # nothing local: every get asks Redis
            assert load_verified(b, 12) in (0, 96)
