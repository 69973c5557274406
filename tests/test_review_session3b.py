"""Second review of this session's changes (the put and recorder threads' priority, warm_up, prefault's
larger asks, the catalog's commits): the cases that broke, each failing before its fix."""

from __future__ import annotations

import gc
import threading

import pytest

from helpers import SPREAD, resident
from pykvstore.store import prefault
from workers import args, load_verified, open_store


def _join_prefault(base: int) -> None:
    while (t := prefault._running.get(base)) is not None:
        t.join(60)


def test_a_get_in_flight_at_close_leaves_no_ask_for_the_next_pool_at_that_address(tmp_path, monkeypatch):
    """close() stops the prefault (which forgets the pool's asks) and then waits for the get in flight,
    whose keep_ahead asked again for the pool being closed. That ask outlived the pool under its address,
    and munmap hands the same address to the next pool of that size (the vLLM worker reopens its store
    for the tensors' geometry): keep_ahead took the new pool's first AHEAD as faulted in, so its warm_up
    did nothing and the first stagings took their first touches in the engine's step.
    Failed before (asks kept by pool address): none of the new pool's first AHEAD pages faulted in."""
    toks, cache, ids = args(0)
    s = open_store(str(tmp_path / "a"), prefault=True)
    base = s._pool.base
    assert s.put(toks, cache, ids) == 96
    s.warm_up()  # an ask on record, as after any put or load
    _join_prefault(base)

    stopped, go, entered = threading.Event(), threading.Event(), threading.Event()
    real_stop, real_load = prefault.stop, s._gets.load

    def stop(pool):  # the real stop; the test goes on once it has run
        real_stop(pool)
        stopped.set()

    def load(*a):  # the real load, once close() has stopped the prefault
        entered.set()
        go.wait(60)
        return real_load(*a)

    monkeypatch.setattr(prefault, "stop", stop)
    s._gets.load = load
    h = s.get_async(toks, cache, ids)
    assert entered.wait(60)
    closing = threading.Thread(target=s.close)
    closing.start()
    assert stopped.wait(60)
    go.set()
    closing.join(60)
    assert h.wait() == 96  # the get finished; its keep_ahead asked again, for the stopped pool
    _join_prefault(base)
    del s, h, real_load, load
    gc.collect()

    with open_store(str(tmp_path / "b"), prefault=True) as t:
        if t._pool.base != base:
            pytest.skip("the next pool did not get the closed one's address")
        assert not any(resident(base, prefault.AHEAD * SPREAD))
        t.warm_up()
        _join_prefault(base)
        done = resident(base, prefault.AHEAD * SPREAD)
        assert all(done), f"{sum(done)} of {len(done)} pages of the new pool's first AHEAD faulted in"


# --- commits ---------------------------------------------------------------------------------------------------

def test_a_writer_whose_reservation_was_evicted_does_not_commit_the_next_writers(tmp_path):
    """Store a's put has written its chunks, not yet committed them, when they are evicted (evict(tokens)
    removes rows being written) and store b reserves the same keys and writes them. a's commit (UPDATE
    of the key's writing row, whoever reserved it) committed b's reservations: b's own commits then
    found no writing row, b counted its put as failed and answered 0, while a, whose reservations were
    gone, answered 96. A commit now takes the row only from its own writer (Catalog.mark_ready's owner)."""
    toks, cache, ids = args(1)
    bucket = str(tmp_path / "b")
    a, b, other = open_store(bucket), open_store(bucket), open_store(bucket)
    a_commits, b_commits, go_a, go_b = (threading.Event() for _ in range(4))

    def held_at_first_commit(store, at, go):
        real = store.bucket.mark_ready

        def mark_ready(key, now, *rest):  # the real commit, held at the first chunk's
            if key == store.hashes(toks)[0]:
                at.set()
                go.wait(60)
            return real(key, now, *rest)

        store.bucket.mark_ready = mark_ready

    held_at_first_commit(a, a_commits, go_a)
    held_at_first_commit(b, b_commits, go_b)
    answers = {}
    ta = threading.Thread(target=lambda: answers.update(a=a.put(toks, cache, ids)))
    ta.start()
    assert a_commits.wait(60)
    assert other.evict(toks) > 0  # a's reservations go (a's files are in place, their rows not committed)
    tb = threading.Thread(target=lambda: answers.update(b=b.put(toks, cache, ids)))
    tb.start()
    assert b_commits.wait(60)  # b reserved the keys again and wrote them
    go_a.set()
    ta.join(60)
    go_b.set()
    tb.join(60)
    try:
        assert answers == {"a": 0, "b": 96}
        assert other.lookup(toks) == 96 and load_verified(other, 1) == 96
    finally:
        for s in (a, b, other):
            s.close()
