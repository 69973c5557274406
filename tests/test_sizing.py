"""Sizing from recorded traffic: the recorder, the LRU curve, the cost-aware replay, the knee."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import xxhash

from pykvstore import recorder, sizing
from pykvstore.recorder import Access, Recorder, Stream

CT = 256
STREAM = Stream("m/a", "bot", "ns-a", CT, 4096 + 64 * 1024)
OTHER = Stream("m/b", "", "ns-b", CT, 4096 + 16 * 1024)


def chain(tokens: np.ndarray, root: bytes = b"ns") -> bytes:
    """Chained keys the way the store makes them (each hashes its parent), cut to 8 bytes."""
    out, prev = [], xxhash.xxh3_128_digest(root)
    for i in range(len(tokens) // CT):
        prev = xxhash.xxh3_128_digest(prev + tokens[i * CT:(i + 1) * CT].astype("<u4").tobytes())
        out.append(prev)
    return recorder.pack_keys(out)


def trace(seed: int, n_puts: int, prompts: int = 12, two_models: bool = True) -> list[Access]:
    """Zipf system prompts, multi-turn sessions (bench_policy's shape, small)."""
    rng = np.random.default_rng(seed)
    base = [rng.integers(0, 32000, int(rng.integers(4 * CT, 20 * CT))) for _ in range(prompts)]
    pop = np.arange(1, prompts + 1) ** -1.1
    pop /= pop.sum()
    out: list[Access] = []
    t = 0.0
    while len(out) < n_puts:
        p = int(rng.choice(prompts, p=pop))
        s = OTHER if two_models and p % 3 == 0 else STREAM
        h = base[p]
        for _ in range(int(rng.integers(1, 5))):
            h = np.concatenate([h, rng.integers(0, 32000, int(rng.integers(100, 600)))])
            out.append(Access(t, s, len(h), chain(h, s.namespace.encode())))
            t += 1.0
            h = np.concatenate([h, rng.integers(0, 32000, int(rng.integers(50, 300)))])
    return out[:n_puts]


def test_stack_distances_equal_a_replay_of_the_lru_policy():
    """Mattson over the chains (root most recent) predicts pykvstore's own LRU exactly, per model too."""
    acc = trace(1, 160)
    prof = sizing.lru_profile(acc)
    assert prof.sample_rate == 1.0
    for frac in (0.05, 0.2, 0.5):
        cap = int(prof.working_set * frac)
        predicted = prof.hit_tokens([cap])
        replayed = sizing.simulate(acc, cap, "lru")
        for m in ("m/a", "m/b", "*"):
            assert predicted[m][0] == replayed[m], (frac, m)
    hits = prof.hit_tokens([prof.working_set * f for f in (0.1, 0.3, 0.6, 1.0)])["*"]
    assert all(np.diff(hits) >= 0) and hits[0] > 0  # a curve, not a constant


def test_every_chunk_counts_only_with_its_prefix():
    """One long chain then its own prefix again: with room for the prefix only, the prefix hits, not the tail."""
    toks = np.arange(8 * CT)
    a = [Access(0, STREAM, 8 * CT, chain(toks)), Access(1, STREAM, 4 * CT, chain(toks[: 4 * CT]))]
    prof = sizing.lru_profile(a)
    assert prof.hit_tokens([4 * STREAM.chunk_bytes])["*"][0] == 4 * CT  # the prefix is at the top of the stack
    assert prof.hit_tokens([3 * STREAM.chunk_bytes])["*"][0] == 3 * CT
    # and the tail pushed out by an unrelated chain is a miss even though the prefix stays
    other = np.arange(10**6, 10**6 + 4 * CT)
    b = [a[0], Access(1, STREAM, 4 * CT, chain(other)), Access(2, STREAM, 8 * CT, chain(toks))]
    prof = sizing.lru_profile(b)
    assert prof.hit_tokens([8 * STREAM.chunk_bytes])["*"][0] == 4 * CT


def test_sampling_tracks_the_exact_curve():
    acc = trace(2, 1200, prompts=30, two_models=False)
    exact = sizing.lru_profile(acc)
    sampled = sizing.lru_profile(acc, exact_limit=exact.chunk_accesses // 4)
    assert 0.2 < sampled.sample_rate < 0.3
    caps = [exact.working_set * f for f in (0.1, 0.25, 0.5)]
    total = sum(exact.tokens_by_model.values())
    err = np.abs(sampled.hit_tokens(caps)["*"] - exact.hit_tokens(caps)["*"]) / total
    assert err.max() < 0.03, err


def test_cost_aware_replay_differs_from_lru_and_fits_the_capacity():
    acc = trace(3, 200)
    prof = sizing.lru_profile(acc)
    cap = int(prof.working_set * 0.1)
    cost = sizing.simulate(acc, cap, "cost")["*"]
    lru = sizing.simulate(acc, cap, "lru")["*"]
    assert cost != lru and 0 < cost
    sampled = sizing.simulate(acc, cap, "cost", simulate_limit=prof.chunk_accesses // 3)["*"]
    total = sum(prof.tokens_by_model.values())
    assert abs(sampled - cost) / total < 0.08  # the miniature simulation (sampled chunks, capacity scaled)


def test_report_marks_the_knee_and_the_current_capacity():
    acc = trace(4, 200)
    r = sizing.size(acc, current_capacity=10 << 20, price_per_mtok=0.15, storage_price=0.1)
    marks = {m for row in r.rows for m in row.marks}
    assert marks == {"knee", "current"}
    assert r.rows[0].capacity < r.recommended < r.working_set * 1.1
    rates = [row.hit_rate for row in r.rows]
    assert rates == sorted(rates) and 0 < rates[0] and rates[-1] <= r.max_hit_rate + 1e-9
    text = sizing.format_report(r)
    assert "recommended (knee)" in text and "current" in text and "m/b" in text
    row = r.rows[-1]
    assert row.net_per_month == pytest.approx(row.recompute_per_month - row.storage_per_month)


@pytest.mark.parametrize("bad", ["", "1GiB,,2GiB", "ten", "-1GiB", "0"])
def test_malformed_capacities(bad):
    with pytest.raises(sizing.SizingError):
        sizing.parse_capacities(bad)


@pytest.mark.parametrize("bad", ["x", "-1", "nan", None])
def test_malformed_prices(bad):
    with pytest.raises(sizing.SizingError):
        sizing.check_price(bad, "price")


@pytest.mark.parametrize("prices", [(1e308, 0.1), (0.15, 1e308)])
def test_prices_too_large_for_the_month_are_refused(prices):
    acc = trace(6, 40)
    with pytest.raises(sizing.SizingError, match="too large"):  # they overflowed to $inf (Infinity in --json)
        sizing.size(acc, capacities=[1 << 40], price_per_mtok=prices[0], storage_price=prices[1])


def test_nothing_to_size():
    with pytest.raises(sizing.SizingError, match="no recorded traffic"):
        sizing.size([])


def test_knee_of_a_saturating_curve():
    x = np.linspace(0, 10, 101)
    assert 10 <= sizing.knee(x, 1 - np.exp(-x)) <= 30
    assert sizing.knee([0, 1, 2], [0, 1, 2]) in (0, 1, 2)  # a line has no knee worth naming; any index is valid


# --- the recorder ---------------------------------------------------------------
def test_history_ages_out_within_its_budget(tmp_path):
    per_put = recorder.ROW_BYTES + 10 * recorder.KEY_COST
    r = Recorder(tmp_path, budget=int(100 * per_put))  # room for 100 puts of 10 chunks
    keys = recorder.pack_keys([os.urandom(16) for _ in range(10)])
    for i in range(500):
        r.record(STREAM, CT * 10, keys, t=float(i))
        if i % 50 == 49:
            r.flush()
    r.close()
    t = recorder.read_totals(tmp_path)
    assert t.puts == 500 and t.chunks == 5000  # lifetime counts stay exact
    kept = list(recorder.read_accesses(tmp_path))
    assert 900 <= sum(a.n for a in kept) <= 1000
    assert kept[-1].t == 499.0 and kept[0].t >= 400  # the newest are the ones kept


@pytest.mark.parametrize("sql", ["UPDATE accesses SET t = 'abc' WHERE rowid = 1",
                                 "UPDATE accesses SET t = 9e999 WHERE rowid = 1",
                                 "UPDATE accesses SET tokens = 'x' WHERE rowid = 1",
                                 "UPDATE accesses SET tokens = 1 WHERE rowid = 1",  # fewer than its chunks hold
                                 "INSERT INTO streams VALUES (7, 'm', '', 'ns', 'x', 4096)",
                                 "INSERT INTO streams VALUES (7, 'm', '', 'ns', 16, -4096)",
                                 "INSERT INTO streams VALUES (7, 'm', '', 'ns', -16, 4096)"])
def test_a_crafted_history_row_is_skipped_not_trusted(tmp_path, sql):
    import sqlite3
    r = Recorder(tmp_path)
    keys = recorder.pack_keys([os.urandom(16) for _ in range(4)])
    for i in range(5):
        r.record(STREAM, 4 * CT, keys, t=float(i))
    r.close()
    c = sqlite3.connect(tmp_path / recorder.FILENAME)
    c.execute(sql)
    c.execute("INSERT INTO accesses VALUES (2.5, 7, 64, 4, ?)", (keys,))  # a put of the crafted stream
    c.commit()
    c.close()
    kept = list(recorder.read_accesses(tmp_path))
    assert len(kept) == (4 if "rowid = 1" in sql else 5)  # the mangled row (or stream's row) is left out
    assert all(a.stream == STREAM and a.t in {0.0, 1.0, 2.0, 3.0, 4.0} for a in kept)
    rep = sizing.size(kept)
    assert rep.window_seconds == (3.0 if "rowid = 1" in sql else 4.0)  # the first put gone, or all five


def test_a_full_disk_drops_one_batch_and_recording_resumes(tmp_path):
    r = Recorder(tmp_path)
    r.flush()
    pages = r._conn.execute("PRAGMA page_count").fetchone()[0]
    r._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the file cannot grow: SQLITE_FULL
    for i in range(300):
        r.record(STREAM, 40 * CT, os.urandom(40 * recorder.KEY_BYTES), t=float(i))
    assert r.flush() == 0 and not r._conn.in_transaction  # the batch is dropped, the connection usable
    r._conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    r.record(STREAM, 4 * CT, os.urandom(4 * recorder.KEY_BYTES), t=1000.0)
    r.close()
    kept = list(recorder.read_accesses(tmp_path))
    assert [a.t for a in kept] == [1000.0] and kept[0].stream == STREAM  # its stream row was written too


def test_no_reuse_recommends_nothing_and_zero_is_a_row():
    rng = np.random.default_rng(5)
    acc = [Access(float(i), STREAM, 4 * CT, chain(rng.integers(0, 32000, 4 * CT))) for i in range(20)]
    r = sizing.size(acc, current_capacity=0)
    assert r.recommended == 0 and r.max_hit_rate == 0
    assert r.rows[0].capacity == 0 and r.rows[0].marks == ["current"]
    assert "would serve nothing" in sizing.format_report(r)


def test_would_have_served_by_tag():
    acc = trace(6, 120)
    prof = sizing.lru_profile(acc)
    w = sizing.would_have_served(prof, 0.15)
    assert {(t["model"], t["tag"]) for t in w["by_tag"]} == {("m/a", "bot"), ("m/b", "")}
    assert sum(t["tokens"] for t in w["by_tag"]) == pytest.approx(w["tokens"])
    assert w["cost"] == pytest.approx(w["tokens"] * 0.15 / 1e6)
    assert 0 < w["hit_rate"] < 1


# --- the store: shadow mode, recording, resize from 0, the CLI -------------------
import torch  # noqa: E402

import pykvstore as kv  # noqa: E402
from pykvstore.cli import main as cli  # noqa: E402

SCT, SBLOCK = 32, 16  # small chunks keep the store tests quick


def small_trace(seed: int, n: int, prompts: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = [rng.integers(0, 32000, int(rng.integers(3 * SCT, 12 * SCT))) for _ in range(prompts)]
    pop = np.arange(1, prompts + 1) ** -1.1
    pop /= pop.sum()
    out: list[np.ndarray] = []
    while len(out) < n:
        h = base[int(rng.choice(prompts, p=pop))]
        for _ in range(int(rng.integers(1, 4))):
            h = np.concatenate([h, rng.integers(0, 32000, int(rng.integers(10, 60)))])
            out.append(h)
            h = np.concatenate([h, rng.integers(0, 32000, int(rng.integers(5, 40)))])
    return out[:n]


def paged_for(trace: list[np.ndarray], heads: int = 1) -> kv.PagedKV:
    blocks = max(len(t) for t in trace) // SBLOCK + 1
    return kv.PagedKV([torch.zeros(blocks, heads, SBLOCK, 8, dtype=torch.float16)], dims="BHTC")


def replay(root, trace, paged, capacity, policy="lru", **kw) -> float:
    hit = total = 0
    ids = np.arange(paged.num_blocks)
    with kv.KVStore(root, model="t/m", capacity=capacity, policy=policy, chunk_tokens=SCT, host_capacity=0, **kw) as s:
        for t in trace:
            u = len(t) // SBLOCK
            hit += s.get(t, paged, ids[:u])
            total += len(t)
            s.put(t, paged, ids[:u])
    return hit / total


def test_shadow_bucket_stores_nothing_and_says_what_it_would_have_served(bucket, no_fsync):
    trace = small_trace(0, 40)
    paged = paged_for(trace)
    assert replay(bucket, trace, paged, 0) == 0.0
    with kv.KVStore(bucket, model="t/m", chunk_tokens=SCT) as s:
        assert s.lookup(trace[1]) == 0
        h = s.put_async(trace[0], paged, np.arange(len(trace[0]) // SBLOCK), tag="bot")
        assert h.wait() == 0
        st = s.stats().bucket
    assert st.capacity_bytes == 0 and st.used_bytes == 0 and st.chunks == 0
    assert not list(bucket.rglob("*.safetensors"))
    w = st.would_have_served
    chunks = [len(t) // SCT for t in trace] + [len(trace[0]) // SCT]
    assert st.recorded["puts"] == len(trace) + 1 and st.recorded["chunks"] == sum(chunks)
    assert st.recorded["lookups"] == 1
    # with room for everything, a chunk misses once (its first time) and hits after
    distinct = len({tuple(t[: (i + 1) * SCT]) for t in trace for i in range(len(t) // SCT)})
    assert w["tokens"] == (sum(chunks) - distinct) * SCT
    assert w["prompt_tokens"] == sum(len(t) for t in trace) + len(trace[0])
    assert {(t["model"], t["tag"]) for t in w["by_tag"]} == {("t/m", ""), ("t/m", "bot")}
    assert w["by_model"]["t/m"]["hit_rate"] == pytest.approx(w["hit_rate"])


def test_prediction_matches_real_buckets(tmp_path, no_fsync):
    """The proof in small: record in a 0 GB bucket, predict, replay through real buckets."""
    trace = small_trace(1, 120)
    paged = paged_for(trace)
    replay(tmp_path / "shadow", trace, paged, 0)
    b = kv.Bucket(tmp_path / "shadow")
    ws = b.size().working_set
    caps = [int(ws * f) for f in (0.1, 0.25, 0.5)]
    for policy, tolerance in (("lru", 0.02), ("cost", 0.05)):
        report = b.size(caps, policy=policy)
        for i, cap in enumerate(caps):
            predicted = next(r.hit_rate for r in report.rows if r.capacity == cap)
            measured = replay(tmp_path / f"{policy}{i}", trace, paged, cap, policy)
            assert measured > 0.05
            assert abs(predicted - measured) <= tolerance, (policy, cap, predicted, measured)
    b.close()


def test_resize_from_zero_starts_storing_at_once(bucket, no_fsync):
    trace = small_trace(2, 4)
    paged = paged_for(trace)
    ids = np.arange(paged.num_blocks)
    with kv.KVStore(bucket, model="t/m", capacity=0, chunk_tokens=SCT) as s:
        t = trace[0]
        assert s.put(t, paged, ids[: len(t) // SBLOCK]) == 0
        kv.Bucket(bucket).resize("64MiB")  # as another process would: the store is not told
        deadline = time.monotonic() + 30
        while s.put(t, paged, ids[: len(t) // SBLOCK]) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.lookup(t) == len(t) // SCT * SCT
        assert s.get(t, paged, ids[: len(t) // SBLOCK]) == len(t) // SCT * SCT
        assert s.stats().bucket.would_have_served is None  # a real bucket reports what it served


def _shadow_worker(root: str, seed: int, n: int) -> None:
    trace = small_trace(seed, n)
    paged = paged_for(trace)
    ids = np.arange(paged.num_blocks)
    with kv.KVStore(root, model="t/m", capacity=0, chunk_tokens=SCT) as s:
        for t in trace:
            s.get(t, paged, ids[: len(t) // SBLOCK])
            s.put(t, paged, ids[: len(t) // SBLOCK])


def test_several_processes_recording_into_one_shadow_bucket(bucket):
    kv.Bucket(bucket, capacity=0).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_shadow_worker, args=(str(bucket), seed, 60)) for seed in (10, 10, 11)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    traces = [small_trace(seed, 60) for seed in (10, 10, 11)]
    all_puts = [t for tr in traces for t in tr]
    chunks = sum(len(t) // SCT for t in all_puts)
    distinct = len({tuple(t[: (i + 1) * SCT]) for t in all_puts for i in range(len(t) // SCT)})
    with kv.Bucket(bucket) as b:
        st = b.stats()
    assert st.recorded["puts"] == len(all_puts) and st.recorded["chunks"] == chunks
    assert st.recorded["tokens"] == sum(len(t) for t in all_puts)
    # however the processes interleaved, each distinct chunk misses exactly once
    assert st.would_have_served["tokens"] == (chunks - distinct) * SCT


def test_cli_size(bucket, capsys, no_fsync):
    kv.Bucket(bucket, capacity=0).close()
    assert cli(["size", str(bucket)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no recorded traffic" in err
    trace = small_trace(3, 60)
    replay(bucket, trace, paged_for(trace), None)
    assert cli(["size", str(bucket), "--price", "0.15", "--storage-price", "0.10"]) == 0
    out = capsys.readouterr().out
    assert "recommended (knee)" in out and "<- current" in out and "0 B" in out
    assert cli(["size", str(bucket), "--capacities", "16KiB,1MiB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["capacity"] for r in data["rows"]] == [0, 16 << 10, 1 << 20]
    assert data["rows"][0]["marks"] == ["current"] and data["rows"][2]["hit_rate"] >= data["rows"][1]["hit_rate"]
    for bad in (["--capacities", "1GiB,,x"], ["--price", "cheap"], ["--storage-price", "-1"]):
        assert cli(["size", str(bucket), *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert cli(["size", str(bucket / "nope")]) == 2


def test_dashboard_serves_the_curve_and_what_a_shadow_bucket_would_have_served(bucket, no_fsync):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from test_dashboard import Dashboard

    kv.Bucket(bucket, capacity=0).close()
    d = Dashboard(bucket, "--read-only")
    try:
        assert "no recorded traffic" in d.call("/api/size")[1]["error"]
        trace = small_trace(4, 50)
        replay(bucket, trace, paged_for(trace), None)
        status, z = d.call("/api/size?price=0.3")
        assert status == 200
        with kv.Bucket(bucket) as b:
            ref = b.size(price_per_mtok=0.3)
            st = b.stats(0.3)
        assert z["recommended"] == ref.recommended and z["current_capacity"] == 0
        assert z["curve"] == [list(p) for p in ref.curve] and z["curve"][-1][1] == pytest.approx(ref.max_hit_rate)
        status, s = d.call("/api/stats?price=0.3")
        assert s["would_have_served"]["tokens"] == st.would_have_served["tokens"] > 0
    finally:
        d.close()


def test_a_planted_link_is_not_followed_and_the_store_still_serves(bucket, tmp_path, no_fsync, caplog):
    kv.Bucket(bucket, capacity="64MiB").close()
    elsewhere = tmp_path / "elsewhere.sqlite"
    (bucket / recorder.FILENAME).symlink_to(elsewhere)
    trace = small_trace(7, 6)
    paged = paged_for(trace)
    assert replay(bucket, trace, paged, None) > 0  # stores and serves without its history
    assert not elsewhere.exists()
    assert "cannot record accesses" in caplog.text
    with kv.Bucket(bucket) as b:
        assert b.stats().recorded is None
