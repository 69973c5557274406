"""The shared Redis tier against real redis-server processes (one node and a 3-master cluster)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pykvstore as kv
from redis_servers import RedisCluster, RedisServer
from workers import check, load_verified, open_store, sequence

pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (.ci/run installs it)")
WORKERS = str(Path(__file__).parent / "workers.py")


@pytest.fixture
def server():
    s = RedisServer()
    yield s
    s.close()


def replica_a_writes(bucket, url, seeds, ttl=None):
    args = [sys.executable, WORKERS, "write", str(bucket), str(seeds[0]), str(len(seeds)), "-", url]
    if ttl:
        args.append(str(ttl))
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [int(line.split()[1]) for line in out.splitlines()]


def test_what_one_replica_stores_another_loads(tmp_path, server):
    assert replica_a_writes(tmp_path / "a", server.url, [1, 2]) == [96, 96]
    with open_store(str(tmp_path / "b"), remote=server.url) as b:  # its own, empty bucket
        toks = sequence(1)[0]
        assert b.lookup(toks) == 96
        assert check(b, 1) == 96 and check(b, 2) == 96
        st = b.stats()
        assert st.remote["hits"] == 6 and st.disk_hits == 0
    with open_store(str(tmp_path / "b")) as b:  # the fetched chunks landed in b's own bucket
        assert check(b, 1) == 96 and check(b, 2) == 96 and b.stats().disk_hits == 6


def test_a_put_is_written_through_and_a_partial_local_prefix_is_completed(tmp_path, server):
    with open_store(str(tmp_path / "a"), remote=server.url) as a:
        toks, cache, ids = sequence(3)
        assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        b.put(toks[:32], kv.PagedKV(cache, "BHTC"), ids)  # b holds chunk 0 itself
        assert b.lookup(toks) == 96
        assert check(b, 3) == 96
        assert b.stats().remote["hits"] == 2  # chunks 1 and 2 only
    assert int(server.cli("dbsize")) == 2 * 3 + 1  # value and metadata per chunk, the namespace index


def test_remote_ttl_expires_in_redis(tmp_path, server):
    replica_a_writes(tmp_path / "a", server.url, [4], ttl=3.0)
    chunk_keys = [k for k in server.cli("keys", "pykvstore:{*").split()]
    assert len(chunk_keys) == 6  # value and metadata of 3 chunks, all with the TTL
    assert all(0 < int(server.cli("pttl", k)) <= 3000 for k in chunk_keys)
    time.sleep(3.2)
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert b.lookup(sequence(4)[0]) == 0 and load_verified(b, 4) == 0


def test_a_damaged_remote_value_is_a_miss(tmp_path, server):
    import redis

    replica_a_writes(tmp_path / "a", server.url, [5])
    r = redis.Redis.from_url(server.url)
    with open_store(str(tmp_path / "probe")) as p:
        p.put(sequence(5)[0][:32], kv.PagedKV(sequence(5)[1], "BHTC"), sequence(5)[2])
        key1 = p.hashes(sequence(5)[0])[1]
    value = bytearray(r.get(f"pykvstore:{{{key1}}}"))
    value[-7] ^= 0x10
    r.set(f"pykvstore:{{{key1}}}", bytes(value))
    with open_store(str(tmp_path / "b"), remote=server.url) as b:
        assert load_verified(b, 5) == 32  # chunk 0 only: nothing wrong is ever served
        assert b.stats().remote["misses"] == 2


def test_auth_required_and_a_wrong_password_refused(tmp_path):
    s = RedisServer(password="s3cret")
    try:
        with open_store(str(tmp_path / "a"), remote=s.url) as a:
            toks, cache, ids = sequence(6)
            a.put(toks, kv.PagedKV(cache, "BHTC"), ids)
        bad = s.url.replace("s3cret", "wrong")
        with pytest.raises(kv.InputError, match="refused the credentials"):
            open_store(str(tmp_path / "b"), remote=bad)
        with pytest.raises(kv.InputError, match="refused the credentials"):
            open_store(str(tmp_path / "c"), remote=f"redis://127.0.0.1:{s.port}/0")
        with open_store(str(tmp_path / "d"), remote=f"redis://127.0.0.1:{s.port}/0",
                        remote_options={"password": "s3cret"}) as d:
            assert check(d, 6) == 96
    finally:
        s.close()


def test_server_stopped_and_restarted_mid_loop(tmp_path, server):
    opts = {"timeout": 0.5, "retry_after": 0.2}
    with open_store(str(tmp_path / "a"), remote=server.url, remote_options=opts) as a, \
            open_store(str(tmp_path / "b"), remote=server.url, remote_options=opts) as b:
        loaded = []
        for i in range(24):
            if i == 8:
                server.stop()
            if i == 16:
                server.start()
                time.sleep(0.3)  # past retry_after: the tier reconnects by itself
            toks, cache, ids = sequence(100 + i)
            assert a.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96  # local puts never fail
            a._remote.flush(5)
            loaded.append(load_verified(b, 100 + i))  # bit-exact whatever it got
        st = b.stats().remote
        assert st["errors"] > 0 and a.stats().remote["dropped"] > 0
        # every iteration: shared before the stop, local only while down, shared again
        # from the first put after the restart (the restarted server is empty)
        assert loaded == [96] * 8 + [0] * 8 + [96] * 8
        assert all(check(a, 100 + i) == 96 for i in range(24))


def test_the_tier_reconnects_when_the_server_comes_up(tmp_path, server):
    """A store opened while the server is down has no client at all: the tier's own
    reconnect (not redis-py's) must bring it back once retry_after has passed."""
    opts = {"timeout": 0.5, "retry_after": 0.2}
    server.stop()
    with open_store(str(tmp_path / "b"), remote=server.url, remote_options=opts) as b:
        assert b._remote.client is None and b.stats().remote["errors"] == 1
        assert load_verified(b, 13) == 0
        server.start()
        assert replica_a_writes(tmp_path / "a", server.url, [13]) == [96]
        time.sleep(0.3)  # past retry_after
        assert load_verified(b, 13) == 96
        assert b._remote.client is not None and b.stats().remote["hits"] == 3


def test_servers_leave_no_temp_directory():
    s = RedisServer()
    parent = s.dir.parent
    assert parent.name.startswith("pykvstore-redis-")
    s.close()
    assert not parent.exists()


def test_a_timeout_mid_pipeline_degrades_to_local(tmp_path, server):
    replica_a_writes(tmp_path / "a", server.url, [7])
    with open_store(str(tmp_path / "b"), remote=server.url, remote_options={"timeout": 0.3, "retry_after": 0.1}) as b:
        server.pause()  # the server stops answering: every round trip times out
        try:
            assert load_verified(b, 7) == 0 and b.lookup(sequence(7)[0]) == 0
        finally:
            server.resume()
        time.sleep(0.2)
        assert load_verified(b, 7) == 96
        assert b.stats().remote["errors"] >= 1


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster()
    yield c
    c.close()


def test_cluster_shares_chunks_across_nodes(tmp_path, cluster):
    assert replica_a_writes(tmp_path / "a", cluster.url, [8, 9, 10]) == [96, 96, 96]
    counts = [int(n.cli("dbsize")) for n in cluster.nodes]
    assert sum(counts) == 2 * 9 + 1 and sum(1 for c in counts if c) >= 2  # spread over the masters
    assert sum(c % 2 for c in counts) == 1  # a chunk's value and metadata share a slot (one node has the index)
    with open_store(str(tmp_path / "b"), remote=cluster.url) as b:
        assert [check(b, s) for s in (8, 9, 10)] == [96, 96, 96]
        assert b.stats().remote["hits"] == 9


@pytest.mark.parametrize("role", ["holds_none", "holds_chunk_0", "holds_a_later_chunk"])
def test_cluster_node_down_degrades(tmp_path, cluster, role):
    """One master down: the chunks before the first one it holds still load, bit-exact;
    the rest are counted misses and the failed round trip an error; local puts go on."""
    replica_a_writes(tmp_path / "a", cluster.url, [11])
    with open_store(str(tmp_path / "probe")) as p:  # sequence 11's chunk keys
        toks, cache, ids = sequence(11)
        p.put(toks[:32], kv.PagedKV(cache, "BHTC"), ids)
        held_by = cluster.holders([f"pykvstore:{{{k}}}" for k in p.hashes(toks)])
    # sequence 11's three chunks on this cluster sit on two of the three masters
    if role == "holds_none":
        node = next(i for i in range(3) if i not in held_by)
    elif role == "holds_chunk_0":
        node = held_by[0]
    else:
        node = next(i for i in held_by[1:] if i != held_by[0])
    first_lost = held_by.index(node) if node in held_by else 3
    down = cluster.nodes[node]
    down.stop()
    try:
        with open_store(str(tmp_path / "b"), remote=cluster.url, remote_options={"timeout": 0.5}) as b:
            assert load_verified(b, 11) == 32 * first_lost  # no exception, nothing wrong served
            st = b.stats().remote
            assert (st["hits"], st["misses"]) == (first_lost, 3 - first_lost)
            if first_lost < 3:  # (the namespace index write, on the writer thread, may fail too)
                assert st["errors"] >= 1
            toks, cache, ids = sequence(12)
            assert b.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    finally:
        down.start()
        cluster.wait_ok()
