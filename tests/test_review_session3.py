"""Review of io_cpus (affinity.py), keep_ahead (prefault.py), the get path's MemoryError and the vLLM connector's
in-step loads: the cases that broke, each failing before its fix.

The connector cases run vLLM's own Scheduler in a process of the vLLM venv (tests/vllm_review_paths.py).
"""

import os
import subprocess

import pytest

from vllm_subprocess import ROOT, needs_vllm, run_script


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-review")
    return run_script(ROOT / "tests" / "vllm_review_paths.py", work / "model", work)


@needs_vllm
def test_a_preempted_request_resumed_with_an_in_step_load_gets_its_load(scheduled):
    """vLLM resumes a preempted request among the step's cached requests, not its new ones, after asking the
    connector again: it counts the 512 held tokens as computed (schedules only the other 88), so a step
    without the load computes from blocks that hold no KV (wrong output, no error)."""
    assert scheduled["connector"] == "PyKVStoreConnector" and scheduled["held"] == 512
    assert scheduled["first"]["loads"] == [{"req": "r1", "start": 0, "end": 512, "blocks": 5, "background": False}]
    r = scheduled["resumed"]
    assert r["new"] == [] and r["resumed"] == ["r1"] and r["scheduled_tokens"] == 600 - 512 and r["sync_loads"]
    assert r["loads"] == [{"req": "r1", "start": 0, "end": 512, "blocks": 5, "background": False}]
    assert r["kv_loaded"] and r["failed"] == []


# --- io_cpus -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["²", "1-²", "١", "0-١"])
def test_cpu_numbers_that_are_not_ascii_digits_are_refused_by_name(spec, tmp_path):
    """str.isdigit() passes "²" (int() then raised a bare ValueError naming no setting, out of the vLLM
    connector's start) and "١" (taken as CPU 1). parse_cpus promises InputError, before the bucket is made."""
    import pykvstore as kv
    from pykvstore import affinity
    from pykvstore.errors import InputError

    with pytest.raises(InputError, match="io_cpus"):
        affinity.parse_cpus(spec)
    with pytest.raises(InputError, match="io_cpus"):
        kv.KVStore(tmp_path / "b", model="m", io_cpus=spec)
    assert not (tmp_path / "b").exists()


# --- keep_ahead ----------------------------------------------------------------------------------------------------

def test_a_larger_ask_while_the_pool_prefault_runs_is_not_dropped(tmp_path):
    """A store opened over a bucket that holds a few chunks starts faulting in those bytes; warm_up (the vLLM
    worker's, right after the open) asks for AHEAD while that runs. start() handed back the running thread
    and dropped the larger ask, so the first stagings took their first touches in the engine's step after
    all (until a later put asked again). The running thread now goes on to the larger size."""
    import pykvstore as kv
    from helpers import SPREAD, resident
    from pykvstore.store import prefault

    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=32) as s:  # an empty bucket: no thread at open
        pool = s._pool
        assert pool.stats()["capacity"] >= prefault.AHEAD and not pool.stats()["pinned"]
        prefault.start(pool, 64 << 20)  # what the open of a bucket holding 64 MiB starts
        s.warm_up()  # at once, as the connector calls it
        while (t := prefault._running.get(pool.base)) is not None:
            t.join(60)
        done = resident(pool.base, prefault.AHEAD * SPREAD)
        assert all(done), f"{sum(done)} of {len(done)} pages of the first AHEAD faulted in"


# --- io_cpus "auto" under an OpenMP runtime that binds one core per thread ---------------------------------------

_TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
needs_two = pytest.mark.skipif(not _TWO_CPUS, reason="needs a process allowed on two CPUs")


@needs_two
def test_outside_current_leaves_out_the_cores_gomp_binds_the_other_openmp_threads_to(tmp_path):
    """vLLM's CPU backend binds OpenMP through GOMP_CPU_AFFINITY ("0 1 ...", libgomp in LD_PRELOAD) or
    KMP_AFFINITY proclist (libiomp): the runtime puts each thread on ONE core, the engine's own thread
    on the first. outside_current() subtracted only the calling thread's core, so io_cpus "auto" named
    the other OpenMP threads' cores and every store thread ran on the forward pass's cores."""
    import sys

    cpus = sorted(os.sched_getaffinity(0))[:2]
    code = ("import torch, os\nx = torch.ones(1000, 1000)\n(x @ x).sum()  # the OpenMP threads start, bound\n"
            "from pykvstore import affinity\nrest = affinity.outside_current()\n"
            "print('RESULT', sorted(os.sched_getaffinity(0)), None if rest is None else sorted(rest))\n")
    env = dict(os.environ, GOMP_CPU_AFFINITY=f"{cpus[0]} {cpus[1]}", OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout + r.stderr
    caller, rest = line.split(" ", 2)[1:]
    if caller != f"[{cpus[0]}]":  # libgomp binds the engine's thread to the first core only
        pytest.skip(f"this torch's OpenMP runtime does not read GOMP_CPU_AFFINITY (the thread is on {caller})")
    assert rest == "None" or str(cpus[1]) not in rest.strip("[]").split(", "), rest


@needs_two
def test_outside_current_leaves_out_a_kmp_proclist(monkeypatch):
    """libiomp's KMP_AFFINITY=granularity=fine,explicit,proclist=[...] binds the same way (the first thread to
    the first proc); the thread here binds itself as libiomp binds the engine's thread."""
    import threading

    from pykvstore import affinity

    cpus = sorted(os.sched_getaffinity(0))[:2]
    monkeypatch.setenv("KMP_AFFINITY", f"granularity=fine,explicit,proclist=[{cpus[0]},{cpus[1]}]")
    seen = {}

    def engine_thread():
        os.sched_setaffinity(0, {cpus[0]})
        seen["rest"] = affinity.outside_current()

    t = threading.Thread(target=engine_thread)
    t.start()
    t.join()
    assert seen["rest"] is None or not set(cpus) & seen["rest"], seen
