"""The Redis tier's error paths, each met for real: a server stopped, paused,
restarted with a password, an ACL user without a permission, keys of the wrong
type written by another client, a TLS client against a plain server.

The tier (tiers/redis.py) is driven directly, against real redis-server
processes (tests/redis_servers.py); every test checks the documented outcome
(a miss, a counter, a clear InputError at construction, nothing raised into the
serving path), not only that a line ran.
"""

from __future__ import annotations

import logging
import shutil
import time

import pytest

from pykvstore.errors import InputError
from pykvstore.tiers.redis import RedisTier
from redis_servers import RedisServer

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (.ci/run installs it)")

K1, K2, K3 = "a1" * 16, "b2" * 16, "c3" * 16
META = {"model": "m", "tag": "", "tokens": "32"}


@pytest.fixture
def server(tmp_path):
    s = RedisServer(workdir=tmp_path / "redis")
    yield s
    s.close()


def until(cond, limit: float = 20.0) -> bool:
    """Polls `cond` until it holds (the tier retries on its own clock); never asserts on time."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# --- configuration: refused at construction, naming the problem -------------------------------
@pytest.mark.parametrize("prefix", ["", "a{b", "c}", 7])
def test_a_prefix_that_would_break_hash_slots_is_refused(server, prefix):
    with pytest.raises(InputError, match="prefix must be a non-empty string without braces"):
        RedisTier(server.url, prefix=prefix)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", 6379])
def test_a_url_of_no_known_scheme_is_refused(url):
    with pytest.raises(InputError, match="remote must be a redis://"):
        RedisTier(url)


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1", "redis+cluster://127.0.0.1:7000,127.0.0.1:x"])
def test_cluster_nodes_without_a_port_are_refused(url):
    with pytest.raises(InputError, match="cluster nodes must be host:port"):
        RedisTier(url)


def test_decode_responses_in_the_url_is_refused_not_a_crash_on_read(server):
    # Found by this test: the option turned every binary chunk value into a UnicodeDecodeError
    # raised out of get_many (the serving path). It is refused up front, the password never echoed.
    url = f"redis://:sekrit@127.0.0.1:{server.port}/0?decode_responses=True"
    with pytest.raises(InputError, match="decode_responses") as e:
        RedisTier(url)
    assert "sekrit" not in str(e.value)
    with pytest.raises(InputError, match="decode_responses"):
        RedisTier(server.url + "?decode_responses=no")  # redis-py reads any value as on
    t = RedisTier(server.url + "?socket_keepalive=true")  # other options pass through
    try:
        assert t.put(K1, bytes(range(256)) * 4, None, META) and t.flush(30)
        assert t.get_many([K1])[0] == bytes(range(256)) * 4
    finally:
        t.close()


def test_ssl_with_a_redis_url_speaks_tls_and_a_plain_server_only_rests_the_tier(server, caplog):
    # Found by this test: ssl=True with a redis:// URL raised TypeError from redis-py at
    # construction (from_url takes TLS from the scheme). Now it means rediss://; against a
    # plain-text server the handshake fails, which is an unreachable server: the tier rests.
    t = RedisTier(server.url, ssl=True, timeout=0.5, retry_after=3600)
    try:
        assert t.client is None and t.stats.errors == 1
        assert t.get_many([K1, K2]) == [None, None]
        assert t.stats.misses == 0  # resting: nothing was asked
        assert "Redis tier unavailable (connect" in warnings(caplog)
    finally:
        t.close()
    with pytest.raises(InputError, match="unix:// socket has no TLS"):
        RedisTier(f"unix://{server.dir}/none.sock", ssl=True)


def test_a_user_that_may_not_ping_is_a_configuration_error(server):
    server.cli("acl", "setuser", "noping", "on", ">pw-123456", "~*", "+@all", "-ping")
    with pytest.raises(InputError, match="NOPERM|permission"):
        RedisTier(server.url, username="noping", password="pw-123456")


def test_a_permission_lost_while_running_rests_the_tier_without_raising(server, caplog):
    # The tier's own reconnect meets an ACL user that may not PING: after construction that is
    # no longer a configuration error to raise, only a failure that rests the tier.
    server.stop()
    t = RedisTier(server.url, username="noping", password="pw-123456", retry_after=0.05)
    try:
        assert t.client is None
        server.start()
        server.cli("acl", "setuser", "noping", "on", ">pw-123456", "~*", "+@all", "-ping")
        # nothing used the tier meanwhile, so it reconnects only now (one warning per kind: "connect" was said)
        assert until(lambda: t.get_many([K1]) == [None] and t.stats.errors >= 2)
        assert t.client is None
        assert "ping" in server.cli("acl", "log")  # the server refused the tier's PING: NOPERM
    finally:
        t.close()


def test_a_server_that_comes_up_demanding_a_password_rests_the_tier_then_it_recovers(server, caplog):
    # The tier's own reconnect (a client never made: the server was down at construction);
    # a server that then demands a password is a configuration error the serving path survives.
    server.stop()
    t = RedisTier(server.url, retry_after=0.05)
    try:
        assert t.client is None and t.stats.errors == 1
        server.password = "now-needed"
        server.start()
        # every use tries to reconnect (after retry_after) and is refused: a miss, never an exception
        assert until(lambda: t.get_many([K1]) == [None] and "Redis tier unavailable (auth" in warnings(caplog))
        assert t.client is None and t.stats.errors >= 2
        assert server.cli("config", "set", "requirepass", "") == "OK"
        server.password = None
        assert until(lambda: t.get_many([K1]) == [None] and t.client is not None)
        assert t.put(K1, b"v" * 100, None, META) and t.flush(30)
        assert t.get_many([K1]) == [b"v" * 100]  # the tier reconnected by itself
    finally:
        t.close()


# --- the write queue ---------------------------------------------------------------------------
def test_a_closed_tier_drops_and_queues_nothing(server):
    t = RedisTier(server.url)
    t.close()
    assert t.put(K1, b"x" * 10, None, META) is False
    assert t.stats.dropped == 1
    t.add_namespace("m", K2, "{}")
    t.touch([K1], 60.0, lambda k: (b"x", META, None))
    assert t.flush(5)  # nothing is left waiting for a writer that has stopped
    assert server.cli("dbsize") == "0"


def test_a_put_over_the_queue_limit_is_dropped_not_queued(server):
    t = RedisTier(server.url, queue_bytes=1000)
    try:
        assert t.put(K1, b"x" * 1001, None, META) is False
        assert t.put(K2, b"y" * 999, None, META) is True
        assert t.flush(30)
        assert t.stats.dropped == 1 and t.stats.puts == 1
        assert server.cli("exists", f"pykvstore:{{{K1}}}") == "0"
        assert server.cli("exists", f"pykvstore:{{{K2}}}") == "1"
    finally:
        t.close()


def test_flush_reports_a_timeout_while_the_server_is_frozen(server):
    t = RedisTier(server.url, timeout=60)
    try:
        server.pause()
        try:
            assert t.put(K1, b"x" * 100, None, META)
            assert t.flush(0.3) is False  # the writer is stuck in its round trip
        finally:
            server.resume()
        assert t.flush(60) is True
        assert t.stats.puts == 1 and t.stats.errors == 0
    finally:
        t.close()


def test_the_writer_outlives_a_batch_that_raises_and_counts_it_dropped(server, caplog):
    # A value the signer cannot hash (a str) raises TypeError on the writer thread. Found by this
    # test: the batch vanished from the counters (neither put nor dropped). It is counted dropped,
    # and the next put still goes through.
    t = RedisTier(server.url, secret="s" * 32)
    try:
        assert t.put(K1, "not bytes", None, META)
        assert t.flush(30)
        assert "Redis writer: TypeError" in warnings(caplog)
        assert t.stats.dropped == 1 and t.stats.puts == 0
        assert t.put(K2, b"y" * 64, None, META) and t.flush(30)
        assert t.stats.puts == 1 and t.get_many([K2]) == [b"y" * 64]
    finally:
        t.close()


def test_writes_refused_for_one_key_type_do_not_rest_the_tier(server, caplog):
    r = redis.Redis.from_url(server.url)
    r.rpush("pykvstore:namespaces:{m}", "a list, not a hash")
    r.rpush(f"pykvstore:{{{K1}}}:meta", "a list, not a hash")
    t = RedisTier(server.url)
    try:
        t.add_namespace("m", K2, '{"a": 1}')
        assert t.put(K1, b"v" * 50, None, META)
        assert t.flush(30)
        text = warnings(caplog)
        assert "refused a namespace index write" in text
        assert "refused 1 write(s) in a batch" in text
        assert t.stats.errors == 0 and t.stats.puts == 1  # the value (SET) itself went through
        assert r.get(f"pykvstore:{{{K1}}}") == b"v" * 50
        assert t.get_many([K1]) == [b"v" * 50]
    finally:
        t.close()


def test_namespaces_while_the_server_is_down_are_empty_and_counted(server):
    t = RedisTier(server.url, retry_after=3600)
    try:
        t.add_namespace("m", K2, '{"a": 1}')
        assert t.flush(30)
        server.stop()
        assert t.namespaces("other") == {}  # the round trip fails: counted, the tier rests
        assert t.stats.errors == 1
        assert t.namespaces("m") == {}  # resting: not asked at all
        assert t.stats.errors == 1
    finally:
        t.close()


# --- touch: sliding TTLs and re-publishing ------------------------------------------------------
def test_touching_a_key_twice_within_the_interval_checks_it_once(server):
    t = RedisTier(server.url, touch_interval=3600)
    try:
        assert t.put(K1, b"v" * 10, 60.0, META) and t.flush(30)
        t.touch([K1], 60.0, lambda k: None)
        t.touch([K1], 60.0, lambda k: None)
        assert t.flush(30)
        assert t.stats.refreshed == 1
    finally:
        t.close()


def test_touch_forgets_old_entries_beyond_its_bound(server):
    server.stop()  # a resting tier: each touch round is dropped at once, so 100k keys take no time
    t = RedisTier(server.url, retry_after=3600, touch_interval=0.0001)
    try:
        for r in range(26):
            t.touch([f"{r:04x}{i:028x}" for i in range(4000)], None, lambda k: None)
            assert t.flush(30)
        assert len(t._touched) <= 4096  # 104,000 keys touched; the old ones forgotten
    finally:
        t.close()


def test_touch_against_a_stopped_server_counts_one_failure_then_rests(server, caplog):
    t = RedisTier(server.url, retry_after=3600)
    try:
        assert t.put(K1, b"v" * 10, 60.0, META) and t.flush(30)
        server.stop()
        t.touch([K1], 60.0, lambda k: None)
        assert t.flush(30)
        assert t.stats.errors == 1 and "Redis tier unavailable (touch" in warnings(caplog)
        t.touch([K2], 60.0, lambda k: None)  # resting: nothing is sent
        assert t.flush(30)
        assert t.stats.errors == 1 and t.stats.refreshed == 0
    finally:
        t.close()


def test_republish_skips_what_cannot_be_read_and_defers_what_is_over_budget(server, caplog):
    t = RedisTier(server.url, republish_bytes_per_s=1000)

    def load(k):
        if k == K1:
            raise OSError("the local file went away")
        if k == K2:
            return None  # evicted locally meanwhile
        return (b"z" * 990, META, None)

    try:
        t.touch([K1, K2, K3], None, load)  # all three are absent from the server
        assert t.flush(30)
        assert "could not read a chunk to re-publish" in warnings(caplog)
        assert t.stats.republished == 1  # the chunks after the unreadable one still go
        assert server.cli("exists", f"pykvstore:{{{K3}}}") == "1" and server.cli("dbsize") == "2"  # value, meta
        k4 = "d4" * 16
        t.touch([k4], None, load)  # 990 bytes against what is left of a 1000-byte budget: deferred
        assert t.flush(30)
        # the deferred key is not held back by touch_interval (30 s): a later hit retries it
        assert until(lambda: (t.touch([k4], None, load), t.flush(30), t.stats.republished == 2)[-1])
        assert server.cli("exists", f"pykvstore:{{{k4}}}") == "1"
    finally:
        t.close()
