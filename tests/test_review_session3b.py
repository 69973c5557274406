"""Second review of this session's changes (the put and recorder threads' priority, warm_up, prefault's
larger asks, the catalog's commits): the cases that broke, each failing before its fix."""

from __future__ import annotations

import gc
import threading

import pytest

from helpers import SPREAD, resident
from pykvstore.store import prefault
from workers import args, open_store


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
