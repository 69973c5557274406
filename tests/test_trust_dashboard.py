"""The dashboard over real HTTP: foreign Host names, non-boolean flags, non-finite numbers, wide binds."""

from __future__ import annotations

import http.client
import json
import select
import subprocess
import sys

import pytest

import pykvstore as kv
from test_dashboard import TOKEN, dash, fill  # noqa: F401 (dash: the same running dashboard fixture)

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def request(dash, path, host=None, payload=None, token=TOKEN):
    port = int(dash.url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{port}", "X-PyKVStore-Token": token}
    body = None if payload is None else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    conn.close()
    return out


def test_a_foreign_host_header_is_refused(dash):
    """DNS rebinding: a page on evil.example re-points its name at 127.0.0.1 and reads the API."""
    port = int(dash.url.rstrip("/").rsplit(":", 1)[1])
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.", "[::2]:1"):
        status, body = request(dash, "/api/stats", host=host)
        assert status == 400 and "bucket" not in json.dumps(body), host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert request(dash, "/api/stats", host=host)[0] == 200


def test_flags_are_json_booleans_only(dash, bucket):
    assert request(dash, "/api/pin", payload={"tag": "support/v2"})[0] == 200  # three pinned chunks
    for bad in ("false", "true", 0, 1, None, [], {}):
        status, err = request(dash, "/api/clear", payload={"tag": "support/v2", "include_pinned": bad})
        assert status == 400 and "include_pinned" in err["error"]
        assert request(dash, "/api/clear", payload={"all": bad})[0] == 400
        assert request(dash, "/api/pin", payload={"tag": "support/v2", "pinned": bad})[0] == 400
    with kv.Bucket(bucket) as b:
        assert b.stats().pinned_chunks == 3 and b.stats().chunks == 12  # nothing refused changed anything
    assert request(dash, "/api/clear", payload={"tag": "support/v2", "include_pinned": False})[0] == 200
    with kv.Bucket(bucket) as b:
        assert b.stats().pinned_chunks == 3


def test_non_finite_or_huge_numbers_are_400(dash):
    for q in ("hours=nan", "hours=inf", "hours=-inf", "hours=1e308", "hours=-1", "hours=" + "9" * 400):
        status, err = request(dash, "/api/history?" + q)
        assert status == 400 and "hours" in err["error"], q
    for q in ("price=nan", "price=inf", "price=1e308", "stale_after=" + "9" * 400):
        assert request(dash, "/api/stats?" + q)[0] == 400, q
    assert request(dash, "/api/resize", payload={"capacity": "9" * 400})[0] == 400
    assert request(dash, "/api/resize", payload={"capacity": -1})[0] == 400
    assert request(dash, "/api/clear", payload=b"[" * 100_000)[0] == 400
    assert request(dash, "/api/history?hours=1")[0] == 200


def test_binding_beyond_loopback_warns_loudly(bucket):
    fill(bucket)
    p = subprocess.Popen([sys.executable, "-m", "pykvstore", "dashboard", str(bucket), "--port", "0",
                          "--host", "0.0.0.0", "--read-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert "http://0.0.0.0:" in p.stdout.readline()
        ready, _, _ = select.select([p.stderr], [], [], 60)  # a silent start would block readline forever
        warning = p.stderr.readline() if ready else ""
        assert "WARNING" in warning and "beyond loopback" in warning
    finally:
        p.terminate()
        p.wait(10)
