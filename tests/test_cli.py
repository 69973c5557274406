"""The `pykvstore` command line, run as a user runs it."""

import json
import subprocess
import sys

import pytest

import pykvstore as kv
from workers import open_store

import test_bucket


def cli(*args, check_rc=0):
    r = subprocess.run([sys.executable, "-m", "pykvstore", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == check_rc, (r.returncode, r.stdout, r.stderr)
    return r


@pytest.fixture
def filled(bucket):
    s, o = test_bucket.fill_for_clear(bucket)
    s.close()
    o.close()
    return bucket


def test_stats_table_and_json_agree_with_the_api(filled):
    out = cli("stats", filled).stdout
    assert "support/v1" in out and "mp/model" in out and "prefill tokens" in out
    data = json.loads(cli("stats", filled, "--json", "--price", "1.5").stdout)
    with kv.Bucket(filled) as b:
        s = b.stats()
    assert data["used_bytes"] == s.used_bytes and data["chunks"] == 12 and data["price_per_mtok"] == 1.5
    assert {(t["model"], t["tag"]) for t in data["by_tag"]} == {(t["model"], t["tag"]) for t in s.by_tag}


def test_ls_filters_and_sorts(filled):
    rows = json.loads(cli("ls", filled, "--json", "--model", "mp/model").stdout)
    assert sorted(r["tag"] for r in rows) == ["", "support/v1", "support/v2"]
    chunks = json.loads(cli("ls", filled, "--json", "--chunks", "--tag", "support/v1", "--sort", "idle").stdout)
    assert len(chunks) == 6 and all(c["tag"] == "support/v1" for c in chunks)
    assert "support/v2" in cli("ls", filled).stdout


def test_clear_gc_resize_quota(filled):
    r = cli("clear", filled, "--tag", "support/v1", "--json")
    assert json.loads(r.stdout)["chunks"] == 6
    assert "cleared 3 chunks" in cli("clear", filled, "--model", "mp/model", "--tag", "").stdout
    assert "reclaimed 0 chunks" in cli("gc", filled).stdout
    size = kv.Bucket(filled).stats().used_bytes
    assert "evicted 1 chunks" in cli("resize", filled, f"{size * 2 // 3}").stdout
    assert "quota for other" in cli("quota", filled, "other", "none").stdout
    assert "cleared 2 chunks" in cli("clear", filled, "--all").stdout


def test_pin_extend_config(filled):
    assert "pinned 6 chunks" in cli("pin", filled, "--tag", "support/v1", "--ttl", "none").stdout
    assert "cleared 3 chunks" in cli("clear", filled, "--model", "mp/model", "--tag", "").stdout
    assert "cleared 3 chunks" in cli("clear", filled, "--all").stdout  # pinned ones stay
    assert "unpinned 6 chunks" in cli("unpin", filled, "--tag", "support/v1").stdout
    assert "expire in 2.0h" in cli("extend", filled, "2h", "--tag", "support/v1").stdout
    config = json.loads(cli("config", filled, "--ttl", "7d", "--ttl-mode", "sliding", "--price", "3", "--json").stdout)
    assert (config["default_ttl"], config["ttl_mode"], config["price_per_mtok"]) == (7 * 86400, "sliding", 3.0)


@pytest.mark.parametrize("args, message", [
    (("stats", "{missing}"), "is not a pykvstore bucket"),
    (("resize", "{bucket}", "ten gigs"), "does not parse"),
    (("clear", "{bucket}", "--model", "nope"), "unknown model 'nope'"),
    (("clear", "{bucket}"), "needs a selector"),
    (("ls", "{bucket}", "--model", "nope"), "unknown model"),
    (("extend", "{bucket}", "soon", "--tag", "x"), "does not parse"),
    (("clear", "{bucket}", "--idle-longer-than=-3h"), "does not parse"),
    (("cost", "--tokens", "0", "--reuses-per-day", "5"), "--tokens"),  # (no geometry is no error: issue 17)
])
def test_errors_are_one_line_with_exit_code_2(filled, tmp_path, args, message):
    args = [a.format(bucket=filled, missing=tmp_path / "nothing-here") for a in args]
    r = cli(*args, check_rc=2)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_fsck_exit_codes(filled):
    assert "0 missing, 0 damaged" in cli("fsck", filled).stdout
    victim = next((filled / "data").rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-10])
    r = cli("fsck", filled, "--json", check_rc=1)
    assert len(json.loads(r.stdout)["damaged"]) == 1
    assert "repaired" in cli("fsck", filled, "--repair").stdout
    cli("fsck", filled)


def test_cost_reproduces_the_motivating_figures():
    a = json.loads(cli("cost", "--tokens", 32000, "--reuses-per-day", 2000, "--price", 0.15,
                       "--layers", 32, "--kv-heads", 8, "--head-dim", 128, "--json").stdout)
    assert a["recompute_cost_per_month"] == pytest.approx(288.0)
    assert a["kv_bytes"] == 32000 * 32 * 2 * 8 * 128 * 2  # 4 GB of Llama-3-8B KV
    b = json.loads(cli("cost", "--tokens", 24000, "--reuses-per-day", 150000, "--bytes-per-token", 131072, "--json").stdout)
    assert b["recompute_cost_per_month"] == pytest.approx(16200.0)  # 24,000 x 150,000 x 30 x $0.15/M
    text = cli("cost", "--tokens", 32000, "--reuses-per-day", 2000, "--layers", 61, "--latent-dim", 576).stdout
    assert "$288.00 a month" in text


def test_live_cost_from_stats(bucket):
    with open_store(str(bucket)) as s:
        test_bucket.put_seq(s, 1)
        test_bucket.load(s, 1)
    out = cli("stats", bucket, "--price", "0.15").stdout
    assert "avoided 96 prefill tokens" in out


def test_cost_without_a_geometry_prints_the_recompute_cost():
    r = cli("cost", "--tokens", 32000, "--reuses-per-day", 2000)
    assert "$288.00 a month" in r.stdout and "--layers" in r.stdout  # and how to get the storage side
    d = json.loads(cli("cost", "--tokens", 24000, "--reuses-per-day", 150000, "--json").stdout)
    assert d["recompute_cost_per_month"] == pytest.approx(16200.0) and d["kv_bytes"] is None


def test_cost_amounts_are_rounded_for_reading():
    text = cli("cost", "--tokens", 32000, "--reuses-per-day", 2000, "--layers", 32).stdout
    assert "$0.10/GB-month" in text and "after 87 reuses a month" in text and "$0.42 a month to store" in text
    tiny = cli("cost", "--tokens", 100, "--reuses-per-day", 5, "--layers", 32).stdout
    assert "$0.0022 a month" in tiny  # two significant digits below a cent, not $0.00


def test_every_cost_option_has_help_text():
    import argparse

    from pykvstore.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    cost = sub.choices["cost"]
    missing = [a.dest for a in cost._actions if not a.help]
    assert missing == []


def test_stats_header_and_table_show_the_same_amount(bucket):
    with open_store(str(bucket)) as s:
        test_bucket.put_seq(s, 1)
        test_bucket.load(s, 1)
    out = cli("stats", bucket, "--price", "0.15").stdout
    header = next(ln for ln in out.splitlines() if "prefill tokens, worth" in ln)
    amount = header.split("worth ")[1].split(" ")[0]
    assert amount != "$0.00" and amount in out.split(header, 1)[1]  # the model table shows it as written


@pytest.mark.parametrize("bad", [["--price", "nan"], ["--price", "inf"], ["--reuses-per-day", "nan"],
                                 ["--reuses-per-day", "inf"], ["--storage-price", "nan"], ["--storage-price", "-1"]],
                         ids=" ".join)
def test_cost_refuses_amounts_that_are_not_finite_or_negative(bad):
    """A careless operator's nan, inf or negative price: one clear line and exit 2, never a traceback."""
    r = cli("cost", "--tokens", 1000, "--reuses-per-day", 5, "--layers", 32, *bad, check_rc=2)
    assert r.stderr.startswith("pykvstore: error:") and "Traceback" not in r.stderr


def test_cost_with_free_recompute_or_free_storage():
    """--price 0 (nothing to save: no break-even) and --storage-price 0 (break-even at 0) print, not crash."""
    free = cli("cost", "--tokens", 1000, "--reuses-per-day", 5, "--price", 0, "--layers", 32).stdout
    assert "never pays for itself" in free
    d = json.loads(cli("cost", "--tokens", 1000, "--reuses-per-day", 5, "--price", 0, "--layers", 32, "--json").stdout)
    assert d["break_even_reuses_per_month"] is None and d["recompute_cost_per_month"] == 0
    cheap = cli("cost", "--tokens", 1000, "--reuses-per-day", 5, "--storage-price", 0, "--layers", 32).stdout
    assert "after 0 reuses a month" in cheap
