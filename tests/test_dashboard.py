"""The live storage page: its JSON API over real HTTP, and the page in a real headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import pykvstore as kv
import test_bucket

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
TOKEN = "t0ken-for-tests"
ARTIFACTS = Path(os.environ.get("PYKVSTORE_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def fill(bucket):
    """Two models, three tags; seed 2's tag is hit last (fresh), the others go stale."""
    s, o = test_bucket.fill_for_clear(bucket)
    test_bucket.load(s, 1)
    time.sleep(1.2)
    test_bucket.load(s, 2)
    s.close()
    o.close()


class Dashboard:
    def __init__(self, bucket, *extra):
        self.proc = subprocess.Popen([sys.executable, "-m", "pykvstore", "dashboard", str(bucket), "--port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.url = line.split()[line.split().index("on") + 1]
        self.announce = line

    def call(self, path, payload=None, token=None, raw=None):
        data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method="POST" if data is not None else "GET")
        if token:
            req.add_header("X-PyKVStore-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def dash(bucket):
    fill(bucket)
    d = Dashboard(bucket, "--token", TOKEN)
    yield d
    d.close()


def test_api_matches_stats_and_guards_changes(dash, bucket):
    status, s = dash.call("/api/stats?price=2&stale_after=1s")
    with kv.Bucket(bucket) as b:
        ref = b.stats(2.0, "1s")
    assert status == 200 and s["used_bytes"] == ref.used_bytes and s["chunks"] == 12
    assert {m: v["bytes"] for m, v in s["by_model"].items()} == {m: v["bytes"] for m, v in ref.by_model.items()}
    assert s["cost_avoided"] == pytest.approx(ref.cost_avoided) and s["cost_avoided"] > 0
    stale = sorted((t["model"], t["tag"]) for t in s["stale"])
    assert {("mp/model", ""), ("mp/model", "support/v1"), ("other", "support/v1")} <= set(stale)
    assert stale == sorted((t["model"], t["tag"]) for t in ref.stale)
    status, h = dash.call("/api/history")
    assert status == 200 and h["models"]["mp/model"][-1]["hit_tokens"] == 192
    status, rows = dash.call("/api/ls?model=other")
    assert status == 200 and [r["tag"] for r in rows] == ["support/v1"]

    # refused: no token, wrong token, unknown names, bad sizes, bad bodies
    assert dash.call("/api/clear", {"model": "other"})[0] == 401
    assert dash.call("/api/clear", {"model": "other"}, token="nope")[0] == 403
    assert dash.call("/api/clear", {"model": "../../etc"}, token=TOKEN) == (404, {"error": "unknown model '../../etc'"})
    assert dash.call("/api/clear", {"model": "other", "tag": "v9"}, token=TOKEN)[0] == 404
    status, err = dash.call("/api/resize", {"capacity": "huge"}, token=TOKEN)
    assert status == 400 and "does not parse" in err["error"]
    assert dash.call("/api/clear", raw=b"{not json", token=TOKEN)[0] == 400
    assert dash.call("/api/clear", {}, token=TOKEN)[0] == 400
    assert dash.call("/api/stats?price=cheap")[0] == 400
    assert dash.call("/api/ls?model=nope")[0] == 404
    assert dash.call("/api/clear", {"model": 5}, token=TOKEN)[0] == 400
    with kv.Bucket(bucket) as b:
        assert b.stats().chunks == 12  # nothing refused changed anything

    # accepted
    status, r = dash.call("/api/clear", {"model": "other", "tag": "support/v1"}, token=TOKEN)
    assert status == 200 and r["chunks"] == 3
    status, r = dash.call("/api/pin", {"tag": "support/v2"}, token=TOKEN)
    assert status == 200 and r["chunks"] == 3
    status, r = dash.call("/api/resize", {"capacity": "1GiB"}, token=TOKEN)
    assert status == 200 and r["capacity_bytes"] == 1 << 30
    with kv.Bucket(bucket) as b:
        assert b.stats().chunks == 9 and b.stats().pinned_chunks == 3 and b.capacity == 1 << 30


def test_read_only_dashboard_refuses_every_change(bucket):
    fill(bucket)
    d = Dashboard(bucket, "--read-only")
    try:
        assert "read-only" in d.announce
        assert d.call("/api/stats")[1]["read_only"] is True
        assert d.call("/api/clear", {"model": "other"}, token=TOKEN)[0] == 403
        assert d.call("/api/resize", {"capacity": "1GiB"}, token=TOKEN)[0] == 403
    finally:
        d.close()


def test_binds_to_loopback_and_needs_a_bucket(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pykvstore", "dashboard", str(tmp_path / "none"), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not a pykvstore bucket" in r.stderr


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed")
def test_the_page_in_a_real_browser(dash, bucket):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1300"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    wait = WebDriverWait(browser, 30)
    try:
        browser.get(dash.url)
        used = lambda: int(browser.find_element(By.ID, "used").get_attribute("data-bytes") or -1)  # noqa: E731
        wait.until(lambda _: used() > 0)
        with kv.Bucket(bucket) as b:
            ref = b.stats()
        assert used() == ref.used_bytes
        assert int(browser.find_element(By.ID, "capacity").get_attribute("data-bytes")) == ref.capacity_bytes
        rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        assert sorted(r.get_attribute("data-model") for r in rows) == sorted(ref.by_model)
        assert browser.find_elements(By.CSS_SELECTOR, "#history polyline")

        # the price drives the cost shown
        price = browser.find_element(By.ID, "price")
        price.clear()
        price.send_keys("1000")
        wait.until(lambda _: browser.find_element(By.ID, "cost-avoided").text == "$0.192")

        # stale rows, then a clear without the token: refused, nothing changes
        stale = browser.find_element(By.ID, "stale-after")
        stale.clear()
        stale.send_keys("1s\n")
        wait.until(lambda _: any(r.get_attribute("data-model") == "other"
                                 for r in browser.find_elements(By.CSS_SELECTOR, "#stale tbody tr")))
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#stale tbody tr")
                   if r.get_attribute("data-model") == "other")
        row.find_element(By.CLASS_NAME, "clear-btn").click()
        wait.until(lambda _: "token" in browser.find_element(By.ID, "message").text)
        assert kv.Bucket(bucket).stats().chunks == 12

        # with the token: the tag goes, in the page and on disk
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#stale tbody tr")
                   if r.get_attribute("data-model") == "other")
        row.find_element(By.CLASS_NAME, "clear-btn").click()
        wait.until(lambda _: "cleared 3 chunks" in browser.find_element(By.ID, "message").text)
        with kv.Bucket(bucket) as b:
            after = b.stats()
        assert after.chunks == 9 and after.by_model["other"]["chunks"] == 0
        assert sum(1 for _ in (bucket / "data").rglob("*.safetensors")) == 9
        wait.until(lambda _: used() == after.used_bytes)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    finally:
        browser.quit()
