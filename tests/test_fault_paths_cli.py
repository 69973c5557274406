"""Error paths of the command line, the dashboard app, the sizing models, the metrics
collector and the Triton copy wrapper, met for real: selector-less and nonsensical
commands, a damaged catalog under a running command, a progress bar on a real
terminal (a pty), a dashboard stopped by SIGINT, bodies and requests a browser would
not send (the app driven over ASGI, no network), crafted access histories, tensors
the copy kernel must refuse.

Each test checks the documented outcome: exit 2 with a message naming the problem
for bad input, exit 1 for a damaged bucket, a 4xx JSON error, a 500 that names only
the error type, exact sizing numbers against an independent computation.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import cli, sizing
from pykvstore.errors import InputError
from pykvstore.recorder import Access, Stream
from workers import open_store, sequence

import test_bucket


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def filled(bucket):
    s, o = test_bucket.fill_for_clear(bucket)
    s.close()
    o.close()
    return bucket


# --- cli.py -------------------------------------------------------------------------------------------
def test_pin_unpin_and_extend_need_a_selector(filled, capsys):
    for argv in (["pin", filled], ["unpin", filled], ["extend", filled, "1h"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and out == ""
        assert f"pykvstore: error: {argv[0]} needs a selector (--model, --tag, --namespace or --key)" in err
    with kv.Bucket(filled) as b:
        assert b.catalog.query("SELECT count(*) FROM chunks WHERE pinned")[0][0] == 0


def test_pin_by_key_pins_that_chunk_and_its_chain(filled, capsys):
    with kv.Bucket(filled) as b:
        root = b.catalog.query("SELECT key FROM chunks WHERE chunk_index = 0 AND tag = 'support/v2'")[0][0]
        chain = {k for (k,) in b.catalog.query(
            "SELECT key FROM chunks WHERE tag = 'support/v2' AND model = 'mp/model'")}
    rc, out, _ = run(capsys, "pin", filled, "--key", root, "--json")
    assert rc == 0 and json.loads(out)["chunks"] == 1  # pin takes the keys named (clear takes their chains)
    with kv.Bucket(filled) as b:
        pinned = {k for (k,) in b.catalog.query("SELECT key FROM chunks WHERE pinned")}
    assert pinned == {root} and root in chain
    with pytest.raises(SystemExit):
        cli.main(["pin", "--help"])
    assert "chunk keys (hex): those chunks only" in " ".join(capsys.readouterr().out.split())


def test_cost_refuses_a_bytes_per_token_that_is_not_positive(capsys):
    rc, out, err = run(capsys, "cost", "--tokens", 1000, "--reuses-per-day", 10, "--bytes-per-token", 0)
    assert rc == 2 and out == "" and "--bytes-per-token must be positive" in err


def test_stats_of_a_0gb_bucket_shows_what_it_would_have_served(tmp_path, capsys):
    bucket = tmp_path / "b"
    with open_store(str(bucket), capacity=0) as s:  # the 0 GB tier: nothing kept, every put recorded
        toks, cache, ids = sequence(1)
        for _ in range(3):
            assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 0
    rc, out, _ = run(capsys, "stats", bucket)
    assert rc == 0
    # 3 puts of 96 tokens: the 2nd and 3rd would have been served whole (192 of 288)
    assert "0 GB tier (shadow): would have served 192 of 288 prompt tokens (66.7%)" in out
    assert "    mp/model: 66.7% (192 tokens)" in out


def test_stats_lists_what_went_stale(filled, capsys):
    time.sleep(0.05)
    rc, out, _ = run(capsys, "stats", filled, "--stale-after", "0.01s")
    assert rc == 0 and "stale (not hit for 0s): clear with" in out
    stale = out.split("stale (not hit for")[1]
    assert "tag=support/v1" in stale and "tag=support/v2" in stale and "tag=-" in stale
    rc, out, _ = run(capsys, "stats", filled, "--stale-after", "1d")
    assert rc == 0 and "stale (not hit for" not in out


def test_a_bucket_the_os_refuses_is_exit_1_with_the_error_not_a_traceback(filled, capsys):
    shutil.rmtree(filled / "tmp")
    (filled / "tmp").write_text("a file where the bucket's tmp/ directory belongs")
    rc, out, err = run(capsys, "gc", filled)
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.startswith("pykvstore: error: ") and f"{filled}/tmp" in err


def test_fsck_on_a_terminal_draws_its_progress_and_as_a_module_exits_with_its_code(filled):
    # a real terminal on stderr (a pty): the progress bar appears; run as `python -m pykvstore.cli`
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "pykvstore.cli", "fsck", str(filled)], stdout=subprocess.PIPE,
                             stderr=slave, text=True)
        os.close(slave)
        seen = b""
        while True:
            r, _, _ = select.select([master], [], [], 60)
            if not r:
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            seen += data
        out, _ = p.communicate(timeout=60)
    finally:
        os.close(master)
    assert p.returncode == 0, out
    assert b"fsck [##############################] 12/12\r\n" in seen  # the bar ends its line
    piped = subprocess.run([sys.executable, "-m", "pykvstore.cli", "fsck", str(filled)], capture_output=True, text=True)
    assert piped.returncode == 0 and "[" not in piped.stderr  # no terminal, no bar
    bad = subprocess.run([sys.executable, "-m", "pykvstore.cli", "pin", str(filled)], capture_output=True, text=True)
    assert bad.returncode == 2 and "needs a selector" in bad.stderr  # the command's code is the process's


def test_a_dashboard_stopped_with_sigint_exits_0_and_closes_its_bucket(filled):
    pytest.importorskip("uvicorn")
    p = subprocess.Popen([sys.executable, "-m", "pykvstore", "dashboard", str(filled), "--port", "0", "--read-only"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line and "(read-only)" in line
        url = line.split()[line.split().index("on") + 1]
        deadline = time.monotonic() + 60
        while True:  # serving (uvicorn's own signal handlers in place) before it is interrupted
            try:
                with urllib.request.urlopen(url + "api/stats", timeout=10) as r:
                    assert json.loads(r.read())["chunks"] == 12
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    assert p.returncode == 0, p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    with kv.Bucket(filled) as b:  # its lease and catalog were let go: the bucket opens and is whole
        assert b.stats().chunks == 12


# --- dashboard/__init__.py, driven over ASGI ----------------------------------------------------------------
TOKEN = "t0ken-for-tests"


def asgi(app, method: str, path: str, body: bytes = b"", token: str = TOKEN) -> tuple[int, dict]:
    """One request through the app, as uvicorn would hand it over (no socket)."""
    headers = [(b"host", b"127.0.0.1:8470"), (b"content-type", b"application/json"),
               (b"x-pykvstore-token", token.encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8470), "root_path": ""}
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    out: list[dict] = []

    async def receive():
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    async def send(message):
        out.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception:  # noqa: BLE001 - starlette re-raises a 500's exception for the server to log, after the reply
        assert any(m["type"] == "http.response.start" and m["status"] == 500 for m in out)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return status, json.loads(data)


@pytest.fixture
def app(filled):
    pytest.importorskip("starlette")
    from pykvstore.dashboard import create_app

    b = kv.Bucket(filled, create=False)
    yield create_app(b, TOKEN, False, ["127.0.0.1"])
    b.close()


def test_a_dashboard_that_can_change_the_bucket_needs_a_token(filled):
    pytest.importorskip("starlette")
    from pykvstore.dashboard import create_app

    with kv.Bucket(filled, create=False) as b:
        with pytest.raises(InputError, match="needs a token"):
            create_app(b, None, False, ["127.0.0.1"])


def test_action_bodies_a_browser_would_not_send_are_400s_and_change_nothing(app, filled):
    assert asgi(app, "POST", "/api/resize", b"[1, 2]") == (400, {"error": "the request body must be a JSON object"})
    status, data = asgi(app, "POST", "/api/resize", b'{"size": "1GiB"}')
    assert status == 400 and "resize needs capacity" in data["error"]
    status, data = asgi(app, "POST", "/api/pin", b'{"pinned": true}')
    assert (status, data) == (400, {"error": "pin needs model or tag"})
    status, data = asgi(app, "POST", "/api/pin", b'{"tag": "support/v1", "pinned": true}')
    assert status == 200 and data["chunks"] == 6  # the same app does act on a sound body
    status, data = asgi(app, "GET", "/api/stats")
    assert status == 200 and data["chunks"] == 12


def test_a_failure_inside_the_bucket_is_a_500_naming_only_the_error_type(app, filled):
    cat = filled / "catalog.sqlite"
    other = sqlite3.connect(cat, timeout=30)  # another process damages the catalog under the running app
    other.execute("DROP TABLE chunks")
    other.close()
    status, data = asgi(app, "GET", "/api/ls")
    assert (status, data) == (500, {"error": "internal error: OperationalError"})
    assert str(filled) not in data["error"]


def test_without_its_extra_the_dashboard_says_what_to_install(filled, monkeypatch):
    from pykvstore import dashboard

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the environment of an install without [dashboard]
    with pytest.raises(InputError, match=r'the dashboard needs its extra: pip install "pykvstore\[dashboard\]"'):
        dashboard.serve(str(filled), port=0, read_only=True)


def test_loopback_names_are_recognised_and_others_are_not():
    from pykvstore.dashboard import allowed_hosts_for, is_loopback

    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("example.com") and not is_loopback("10.0.0.1") and not is_loopback("")
    assert "10.0.0.1" in allowed_hosts_for("10.0.0.1") and "10.0.0.1" not in allowed_hosts_for("localhost")


# --- sizing ----------------------------------------------------------------------------------------------
def _acc(t: float, stream: Stream, keys: list[int]) -> Access:
    raw = b"".join(k.to_bytes(8, "little") for k in keys)
    return Access(t, stream, len(keys) * stream.chunk_tokens, raw)


S1 = Stream("m", "", "ab" * 16, 32, 1000)


def test_a_sample_whose_keys_all_fall_under_the_threshold_re_lays_its_tree_exactly():
    # A crafted history: every key hashes low, so the 1-in-N sample keeps them all and runs past
    # its estimated size; the tree is re-laid mid-pass. Its distances must be the exact ones, scaled.
    acc = [_acc(float(i), S1, [1000 * (i % 7) + j for j in range(8)]) for i in range(60)]
    exact = sizing.lru_profile(acc)
    sampled = sizing.lru_profile(acc, exact_limit=100)  # 480 chunk accesses: sampled at 100/480
    rate = sampled.sample_rate
    assert rate < 1
    assert len(sampled.distance) == len(exact.distance)  # every key was kept by the sample
    finite = np.isfinite(exact.distance)
    assert (np.isfinite(sampled.distance) == finite).all() and finite.sum() > 300
    assert np.allclose(sampled.distance[finite] * rate, exact.distance[finite])


def test_replay_handles_shared_keys_chunks_over_capacity_and_empty_samples():
    big = Stream("m", "big", "cd" * 16, 32, 5000)
    acc = [_acc(0.0, S1, [1, 2]), _acc(1.0, S1, [3, 2]),  # key 2 is held but not as chunk 1 of the prefix
           _acc(2.0, big, [10]),  # larger than the whole capacity: never admitted, nothing evicted for it
           _acc(3.0, S1, [1, 2]), _acc(4.0, S1, [3, 2])]
    got = sizing.simulate(acc, 3000, "lru")  # room for exactly keys 1, 2 and 3
    # puts 4 and 5 hit their whole chains (2 chunks of 32 tokens each): key 2, already held, made no room
    # for itself (evicting key 1), and the big chunk changed nothing
    assert got["*"] == 4 * 32 and got["m"] == 4 * 32
    # a held key met again past the held prefix makes no room for itself: chunk 5 is not evicted for it
    acc = [_acc(0.0, S1, [5]), _acc(1.0, S1, [1, 2]), _acc(2.0, S1, [3, 2]), _acc(3.0, S1, [5])]
    assert sizing.simulate(acc, 4000, "lru")["*"] == 32
    high = [_acc(float(i), S1, [2 ** 63 + i]) for i in range(10)]  # no key falls in a 1-in-2 sample
    assert sizing.simulate(high, 4000, "lru", simulate_limit=5)["*"] == 0


def test_nice_size_of_nothing_is_one_unit():
    assert sizing.nice_size(0) == 1 << 20
    assert sizing.nice_size(-5.0) == 1 << 20
    assert sizing.nice_size(3 << 20) == 3 << 20


# --- metrics.py -------------------------------------------------------------------------------------------
def test_bytes_per_tag_reach_prometheus(filled):
    prometheus_client = pytest.importorskip("prometheus_client")
    from pykvstore import metrics

    with kv.Bucket(filled) as b:
        reg = metrics.instrument(b, prometheus_client.CollectorRegistry())
        text = prometheus_client.generate_latest(reg).decode()
        by_tag = {(t["model"], t["tag"]): t["bytes"] for t in b.stats().by_tag}
    assert len(by_tag) == 4
    for (model, tag), n in by_tag.items():
        assert f'pykvstore_tag_bytes{{model="{model}",tag="{tag}"}} {float(n)}' in text


# --- kernels/paged_copy.py --------------------------------------------------------------------------------
def test_the_copy_kernel_wrapper_refuses_what_it_cannot_address():
    pytest.importorskip("triton")
    from pykvstore.kernels import paged_copy

    ids = torch.arange(4, dtype=torch.int64)
    four_d = [torch.zeros(8, 2, 4, 16)]
    with pytest.raises(ValueError, match=r"views must be \(block, plane, token, head, channel\)"):
        paged_copy._plan(four_d, ids, torch.empty(0), 4)
    n = 8 * 2 * 4 * 2 * 16
    buf = bytearray(2 * n + 2)  # a layer one byte into a buffer (torch.frombuffer allows the offset)
    odd = torch.frombuffer(buf, dtype=torch.bfloat16, offset=1, count=n).view(8, 2, 4, 2, 16)
    views = [torch.zeros(8, 2, 4, 2, 16, dtype=torch.bfloat16), odd]
    staging = torch.empty(1, 2, 2, 16, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="aligned to their element size"):
        paged_copy._plan(views, ids, staging, 4)
    views[1] = torch.zeros(8, 2, 4, 2, 16, dtype=torch.bfloat16)
    paged_copy._plan(views, ids, staging, 4)  # the same layers, aligned, plan fine
