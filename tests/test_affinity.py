"""io_cpus: every thread a store starts runs on the CPUs it was given, and the caller keeps its own."""

from __future__ import annotations

import os
import threading

import pytest

import pykvstore as kv
from pykvstore import affinity
from pykvstore.errors import InputError

CALLER = frozenset(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CALLER) < 2, reason="needs a process allowed on two CPUs")


def tasks() -> dict[int, frozenset[int]]:
    """This process's threads and the CPUs each may run on (native and Python threads alike)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except OSError:  # ended meanwhile
            pass
    return out


@pytest.mark.parametrize("spec,want", [("0,2-3", {0, 2, 3}), (" 5 ", {5}), ([1, 2], {1, 2}), ({7}, {7}),
                                       ("1-1", {1}), (None, None), ("", None), ("inherit", None)])
def test_cpu_sets_parse(spec, want):
    assert affinity.parse_cpus(spec) == (None if want is None else frozenset(want))


@pytest.mark.parametrize("spec", ["a", "1,,2", "3-1", "-1", "1-", "2-x", "0x1", [True], [-1], ["1"], [1.0], 3, [],
                                  "70000", [1 << 20]])
def test_bad_cpu_sets_are_refused_with_the_reason(spec):
    with pytest.raises(InputError, match="io_cpus"):
        affinity.parse_cpus(spec)


def test_a_bad_cpu_set_is_refused_before_the_bucket_is_made(tmp_path):
    with pytest.raises(InputError, match="io_cpus"):
        kv.KVStore(tmp_path / "b", model="m", io_cpus="2-1")
    assert not (tmp_path / "b").exists()


@needs_two
def test_the_store_threads_run_on_io_cpus_and_the_caller_keeps_its_own(tmp_path):
    io = frozenset({max(CALLER)})
    before = tasks()
    store = kv.KVStore(tmp_path / "b", model="m", io_cpus=sorted(io))
    try:
        # the get and put threads start at first use, from the caller's thread
        assert store._worker("get").submit(os.sched_getaffinity, 0).result() == io
        assert store._worker("put").submit(os.sched_getaffinity, 0).result() == io
        new = {tid: cpus for tid, cpus in tasks().items() if tid not in before}
        # the engine's I/O threads (4 by default), the recorder, get and put: none left on the caller's set
        assert len(new) >= kv.defaults.get("io_threads") + 2, new
        assert set(new.values()) == {io}, new
        assert frozenset(os.sched_getaffinity(0)) == CALLER
        view = store._with_salt("tenant")  # a view's threads (its prefault) start on the same CPUs
        assert view._io_cpus == io
    finally:
        store.close()


@needs_two
def test_the_setting_applies_when_the_store_is_given_none(tmp_path, monkeypatch):
    io = frozenset({min(CALLER)})
    monkeypatch.setitem(kv.defaults._values, "io_cpus", None)
    kv.defaults.set(io_cpus=f"{min(CALLER)}")
    try:
        with kv.KVStore(tmp_path / "b", model="m") as store:
            assert store._worker("get").submit(os.sched_getaffinity, 0).result() == io
        with kv.KVStore(tmp_path / "b", model="m", io_cpus="inherit") as store:
            assert store._worker("get").submit(os.sched_getaffinity, 0).result() == CALLER
    finally:
        kv.defaults.set(io_cpus=None)


@needs_two
def test_outside_current_names_the_cpus_a_bound_thread_is_not_on():
    """What the vLLM connector gives its store on a CPU server: the cores vLLM did not bind compute to."""
    seen = {}

    def bound():
        os.sched_setaffinity(0, {min(CALLER)})
        seen["rest"] = affinity.outside_current()

    t = threading.Thread(target=bound)
    t.start()
    t.join()
    assert seen["rest"] is not None and min(CALLER) not in seen["rest"]
    assert CALLER - {min(CALLER)} <= seen["rest"]


def test_a_cpu_set_the_kernel_refuses_leaves_the_thread_where_it_was():
    """A container that does not allow the CPUs costs placement, never the store (no exception)."""
    offline = max(affinity._online()) + 1000
    seen = {}

    def run():
        seen["moved"] = affinity.pin_current_thread(frozenset({offline}))
        seen["cpus"] = frozenset(os.sched_getaffinity(0))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == {"moved": False, "cpus": CALLER}

