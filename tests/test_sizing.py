"""Sizing from recorded traffic: the recorder, the LRU curve, the cost-aware replay, the knee."""

from __future__ import annotations

import multiprocessing as mp
import os

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


def test_nothing_to_size():
    with pytest.raises(sizing.SizingError, match="no recorded traffic"):
        sizing.size([])


def test_knee_of_a_saturating_curve():
    x = np.linspace(0, 10, 101)
    assert 10 <= sizing.knee(x, 1 - np.exp(-x)) <= 30
    assert sizing.knee([0, 1, 2], [0, 1, 2]) in (0, 1, 2)  # a line has no knee worth naming; any index is valid


# --- the recorder ---------------------------------------------------------------
def _record(root: str, worker: int, n: int) -> None:
    r = Recorder(root)
    for i in range(n):
        r.record(STREAM, 300 + i, recorder.pack_keys([bytes([worker, i % 256, i // 256]) * 6] * (1 + i % 3)))
    r.close()


def test_several_processes_record_exact_counts(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record, args=(str(tmp_path), w, 700)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    t = recorder.read_totals(tmp_path)
    assert t.puts == 4 * 700
    assert t.chunks == 4 * sum(1 + i % 3 for i in range(700))
    assert t.tokens == 4 * sum(300 + i for i in range(700))
    rows = list(recorder.read_accesses(tmp_path))
    assert len(rows) == 4 * 700 and sum(a.n for a in rows) == t.chunks
    assert [a.t for a in rows] == sorted(a.t for a in rows)


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
