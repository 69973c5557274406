"""Lifecycle controls: TTL, pins, tags, resize, quotas, clear, gc, policies, stats, fsck."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

import pykvstore as kv
from helpers import block_table, make_cache
from workers import check, open_store, sequence

WORKERS = str(Path(__file__).parent / "workers.py")
CT = 32


def put_seq(s, seed, n=96, **kw):
    toks, cache, ids = sequence(seed)
    return s.put(toks[:n], kv.PagedKV(cache, "BHTC"), ids, **kw)


def chunk_size(bucket):
    with open_store(str(bucket / "probe")) as s:
        put_seq(s, 0, 32)
        return s.stats().used_bytes


def load(s, seed):
    toks, _, _ = sequence(seed)
    dst = make_cache("BHTC", seed=77)
    return s.get(toks, kv.PagedKV(dst, "BHTC"), block_table(12, 24, 5))


# --- TTL -----------------------------------------------------------------------
def test_an_expired_chunk_is_never_served_even_before_gc(bucket):
    with open_store(str(bucket)) as s:
        put_seq(s, 1, ttl=1.5)
        put_seq(s, 2)  # no TTL: lives forever
        toks, _, _ = sequence(1)
        assert s.lookup(toks) == 96 and load(s, 1) == 96
        time.sleep(1.6)
        assert s.lookup(toks) == 0 and load(s, 1) == 0  # expired, still on disk
        assert s.stats().chunks == 6
        assert s.gc().chunks == 3
        st = s.stats()
        assert st.chunks == 3 and st.bucket.evictions["ttl"]["chunks"] == 3 and check(s, 2) == 96


def test_bucket_default_ttl_and_a_put_after_expiry_rewrites(bucket):
    with kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, ttl=0.3) as s:
        put_seq(s, 1)
        time.sleep(0.4)
        assert put_seq(s, 1) == 96  # replaced, not counted as held
        assert check(s, 1) == 96
        s.bucket.set_defaults(ttl=None)
        put_seq(s, 3)
        assert all(r.expires is None for r in s._catalog.rows("chunk_index >= 0 AND tag IS NULL")
                   if r.key in s.hashes(sequence(3)[0]))


def test_sliding_ttl_is_extended_by_every_hit(bucket):
    with open_store(str(bucket)) as s:
        put_seq(s, 1, ttl=2.0, ttl_mode="sliding")
        put_seq(s, 2, ttl=2.0)  # absolute
        for _ in range(3):
            time.sleep(0.8)
            assert load(s, 1) == 96
            load(s, 2)
        toks1, toks2 = sequence(1)[0], sequence(2)[0]
        assert s.lookup(toks1) == 96  # 2.4 s after the put: kept alive by hits
        assert s.lookup(toks2) == 0  # absolute: gone after 2 s whatever the hits


def test_extend_changes_expiry(bucket):
    with open_store(str(bucket)) as s:
        put_seq(s, 1, ttl=1.0)
        toks = sequence(1)[0]
        assert s.extend(toks, "1h") == 3
        time.sleep(1.1)
        assert s.lookup(toks) == 96
        assert s.extend(toks, None) == 3
        assert all(r.expires is None for r in s._catalog.rows())
        with pytest.raises(kv.SizeError, match="does not parse"):
            s.extend(toks, "soon")


# --- pins ----------------------------------------------------------------------
def test_pinned_chunks_survive_a_capacity_squeeze(bucket):
    size = chunk_size(bucket)
    with kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, capacity=6 * size) as s:
        put_seq(s, 1)
        assert s.pin(sequence(1)[0]) == 3
        for seed in range(2, 8):  # far more than fits
            put_seq(s, seed)
        assert check(s, 1) == 96 and s.stats().used_bytes <= 6 * size
        assert put_seq(s, 9) == 96  # the other 3 slots keep turning over
        s.unpin(sequence(1)[0])
        for seed in range(10, 13):
            put_seq(s, seed)
        assert s.lookup(sequence(1)[0]) == 0  # unpinned: evicted like the rest


def test_a_pin_keeps_ttl_unless_it_says_otherwise(bucket):
    with open_store(str(bucket)) as s:
        put_seq(s, 1, ttl=1.0)
        put_seq(s, 2, ttl=1.0)
        s.pin(sequence(1)[0])
        s.pin(sequence(2)[0], ttl=None)
        time.sleep(1.1)
        assert s.lookup(sequence(1)[0]) == 0 and s.lookup(sequence(2)[0]) == 96


def test_a_bucket_full_of_pins_stores_nothing_more(bucket):
    size = chunk_size(bucket)
    with kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, capacity=3 * size) as s:
        put_seq(s, 1)
        s.pin(sequence(1)[0])
        assert put_seq(s, 2) == 0 and check(s, 1) == 96


# --- resize and quotas -----------------------------------------------------------
def test_resize_shrinks_tails_first_and_grows_without_loss(bucket):
    size = chunk_size(bucket)
    with open_store(str(bucket)) as s:
        for seed in range(4):
            put_seq(s, seed)
        load(s, 0)  # most recent
        removed = s.resize(7 * size)
        assert removed.chunks == 5 and s.stats().used_bytes == 7 * size
        assert s.lookup(sequence(0)[0]) == 96  # the recently used chain stays whole
        held = [s.lookup(sequence(k)[0]) for k in range(4)]
        assert sum(held) == 7 * CT and all(h % CT == 0 for h in held)
        assert s.resize("1GiB").chunks == 0 and [s.lookup(sequence(k)[0]) for k in range(4)] == held
    assert kv.Bucket(bucket).capacity == 1 << 30


def test_resize_while_another_process_writes(bucket):
    size = chunk_size(bucket)
    with open_store(str(bucket), capacity=100 * size):
        pass
    proc = subprocess.Popen([sys.executable, WORKERS, "write", str(bucket), "100", "30"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # the writer is running
        with kv.Bucket(bucket) as b:
            b.resize(9 * size)
    finally:
        proc.communicate()
    assert proc.returncode == 0
    with open_store(str(bucket)) as s:
        st = s.stats()
        assert st.capacity_bytes == 9 * size and st.used_bytes <= 9 * size  # the writer obeyed at once
        assert sum(check(s, 100 + i) for i in range(30)) == st.chunks * CT


def test_model_quota(bucket):
    size = chunk_size(bucket)
    with open_store(str(bucket)) as s, kv.KVStore(bucket, model="other", chunk_tokens=CT) as o:
        s.bucket.set_quota("other", 3 * size)
        for seed in range(3):
            put_seq(o, seed)
            put_seq(s, seed)
        assert o.bucket.stats().by_model["other"]["bytes"] == 3 * size
        assert s.bucket.stats().by_model["mp/model"]["bytes"] == 9 * size  # the quota binds one model only
        assert s.bucket.stats().evictions["quota"]["chunks"] == 6
        with pytest.raises(kv.SizeError):
            s.bucket.set_quota("other", "lots")


# --- clear ---------------------------------------------------------------------
def fill_for_clear(bucket):
    s = open_store(str(bucket))
    o = kv.KVStore(bucket, model="other", chunk_tokens=CT)
    put_seq(s, 1, tag="support/v1")
    put_seq(s, 2, tag="support/v2")
    put_seq(s, 3)
    put_seq(o, 4, tag="support/v1")
    return s, o


@pytest.mark.parametrize("selector, expect_chunks", [
    ({"model": "other"}, 3),
    ({"tag": "support/v1"}, 6),
    ({"tag": ""}, 3),
    ({"model": "mp/model", "tag": "support/v1"}, 3),
    ({}, 12),
])
def test_clear_by_selector(bucket, selector, expect_chunks):
    s, o = fill_for_clear(bucket)
    try:
        r = s.bucket.clear(**selector)
        assert r.chunks == expect_chunks and s.stats().chunks == 12 - expect_chunks
        on_disk = sum(1 for _ in (bucket / "data").rglob("*.safetensors"))
        assert on_disk == 12 - expect_chunks
    finally:
        s.close()
        o.close()


def test_clear_by_namespace_prefix_age_and_creation(bucket):
    s, o = fill_for_clear(bucket)
    try:
        ns = o.bucket.stats().by_namespace
        other_ns = next(k for k, v in ns.items() if v["model"] == "other")
        assert s.bucket.clear(namespace=other_ns).chunks == 3
        assert s.clear(prefix=sequence(2)[0][:64]).chunks == 3  # the prefix and what is chained after it
        time.sleep(1.2)
        put_seq(s, 5)
        assert s.bucket.clear(idle_longer_than=1.0).chunks == 6  # seeds 1 and 3 were idle
        assert s.bucket.clear(created_before=time.time() + 1).chunks == 3
        assert s.stats().chunks == 0
        with pytest.raises(kv.InputError, match="unknown model"):
            s.bucket.clear(model="nope")
        with pytest.raises(kv.InputError, match="ISO-8601"):
            s.bucket.clear(created_before="yesterday")
    finally:
        s.close()
        o.close()


def test_clear_keeps_pinned_chains_unless_told(bucket):
    s, o = fill_for_clear(bucket)
    try:
        toks = sequence(1)[0]
        s.pin(toks[:32])  # only the first chunk
        r = s.bucket.clear(tag="support/v1")
        assert r.chunks == 3 + 2  # other's chain, and the unpinned tail of seed 1
        assert s.lookup(toks) == 32
        assert s.bucket.clear(tag="support/v1", include_pinned=True).chunks == 1
        assert s.stats().bucket.evictions["manual"]["chunks"] == 6
    finally:
        s.close()
        o.close()


# --- policies ------------------------------------------------------------------
def test_cost_aware_policy_keeps_the_most_recompute_per_byte(bucket):
    size = chunk_size(bucket)
    with kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, capacity=6 * size, policy="cost") as s:
        put_seq(s, 1)
        put_seq(s, 2)
        for _ in range(3):  # seed 1 is hit often, but seed 2 was hit last
            load(s, 1)
        load(s, 2)
        put_seq(s, 3, 32)  # needs one chunk: LRU would take seed 1's tail; cost-aware takes seed 2's
        assert s.lookup(sequence(1)[0]) == 96 and s.lookup(sequence(2)[0]) == 64
        assert s.stats().bucket.policy == "cost"
    with pytest.raises(kv.InputError, match="unknown eviction policy"):
        kv.KVStore(bucket, model="m", policy="fifo")


# --- stats -----------------------------------------------------------------------
def test_stats_report_hits_costs_tags_and_staleness(bucket):
    with open_store(str(bucket)) as s:
        put_seq(s, 1, tag="bot/v1")
        put_seq(s, 2, tag="bot/v2")
        toks = sequence(1)[0]
        longer = list(toks) + [1] * 32
        dst = make_cache("BHTC", blocks=40, seed=3)
        assert s.get(longer, kv.PagedKV(dst, "BHTC"), block_table(16, 40)) == 96
        time.sleep(1.2)
        load(s, 2)
        st = s.stats(price_per_mtok=2.0, stale_after=1.0)
        b = st.bucket
        m = b.by_model["mp/model"]
        assert (m["hit_tokens"], m["miss_tokens"]) == (192, 32)
        assert m["hit_rate"] == pytest.approx(192 / 224) and m["hit_rate_hour"] == pytest.approx(192 / 224)
        assert b.tokens_avoided == 192 and b.cost_avoided == pytest.approx(192 * 2.0 / 1e6)
        assert b.bytes_written == b.used_bytes and b.bytes_read == 0  # every hit came from host memory
        assert {t["tag"]: t["chunks"] for t in b.by_tag} == {"bot/v1": 3, "bot/v2": 3}
        assert [t["tag"] for t in b.stale] == ["bot/v1"]  # hit 1.2 s ago, stale after 1 s
        assert b.free_bytes == b.capacity_bytes - b.used_bytes and len(b.by_namespace) == 1
    with kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, host_capacity=1) as s:
        load(s, 1)
        assert s.stats().bucket.bytes_read == b.used_bytes // 2  # now from disk


def test_counters_stay_exact_with_four_processes(bucket):
    with open_store(str(bucket)) as s:
        for seed in range(4):
            put_seq(s, seed)
    procs = [subprocess.Popen([sys.executable, WORKERS, "check", str(bucket)] + [str(x % 4) for x in range(10)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(o.strip() == str(10 * 96) for o in outs)
    with kv.Bucket(bucket) as b:
        m = b.stats().by_model["mp/model"]
        assert m["hit_tokens"] == 4 * 10 * 96 and m["miss_tokens"] == 0
        hits = b.catalog.query("SELECT sum(hits) FROM chunks")[0][0]
        assert hits == 4 * 10 * 3


# --- fsck ----------------------------------------------------------------------
def test_fsck_finds_and_repairs(bucket):
    with open_store(str(bucket)) as s:
        for seed in range(3):
            put_seq(s, seed)
        rows = {r.chunk_index: r for r in s._catalog.rows() if r.key in s.hashes(sequence(0)[0])}
        seed1 = [r for r in s._catalog.rows() if r.key in s.hashes(sequence(1)[0])]
        seed2 = {r.chunk_index: r for r in s._catalog.rows() if r.key in s.hashes(sequence(2)[0])}
    with kv.Bucket(bucket) as b:
        assert b.fsck()["problems"] == 0
    data = bytearray((bucket / rows[1].path).read_bytes())
    data[-5] ^= 0xFF
    (bucket / rows[1].path).write_bytes(bytes(data))  # damaged: seed 0 from chunk 1 on is lost
    (bucket / seed1[0].path).unlink()  # missing
    with kv.Bucket(bucket) as b:
        with b.catalog.transaction() as c:
            c.execute("DELETE FROM chunks WHERE key = ?", (seed2[1].key,))  # unindexed: seed 2's middle chunk
        r = b.fsck()
        assert [d["path"] for d in r["damaged"]] == [rows[1].path] and r["missing"] == [seed1[0].key]
        assert r["unindexed"] == [seed2[1].path]
        assert not r["repaired"]
    with open_store(str(bucket)) as s:
        assert s.lookup(sequence(2)[0]) == 32  # the chain breaks at the row that is gone
    with kv.Bucket(bucket) as b:
        r = b.fsck(repair=True)
        assert r["repaired"] and b.fsck()["problems"] == 0
    with open_store(str(bucket)) as s:
        assert s.lookup(sequence(0)[0]) == 32 and s.lookup(sequence(1)[0]) == 0
        assert check(s, 2) == 96  # re-indexed from its file: the whole chain again
