"""The SGLang HiCache backend with real SGLang 0.5.23 classes on the CPU (its own venv, `make sglang-env`).

Each scenario runs in a process of the SGLang venv's Python (tests/sglang_worker.py):
SGLang's host KV pools over CPU tensors, its StorageBackendFactory loading the
backend as `dynamic`, its page hashes, and its cache controller's own backup,
hit-query and prefetch methods. A first process stores and exits; the others
are restarted servers and replicas on the same bucket.
"""

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pykvstore as kv

ROOT = Path(__file__).resolve().parent.parent
SGLANG_PYTHON = os.environ.get("PYKVSTORE_SGLANG_PYTHON", str(ROOT / ".venv-sglang" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not Path(SGLANG_PYTHON).exists(),
                                reason="no SGLang environment (make sglang-env builds .venv-sglang)")
PAGES, P = 12, 16


def worker(cmd: str, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([SGLANG_PYTHON, str(ROOT / "tests" / "sglang_worker.py"), cmd, str(work)],
                       capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"sglang worker {cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One server stores and exits; then a restarted server (with replicas and neighbours),
    a server on a copy of the bucket with one chunk damaged, and a lifecycle run, side by side."""
    work = tmp_path_factory.mktemp("sglang")
    stored = worker("store", work)
    damaged_work = tmp_path_factory.mktemp("sglang-damaged")
    subprocess.run(["cp", "-a", str(work / "bucket"), str(damaged_work / "bucket")], check=True)
    with kv.Bucket(damaged_work / "bucket") as b:
        rows = sorted(b.catalog.rows(), key=lambda r: r.key)
    assert len(rows) == PAGES
    victim = rows[5]
    path = damaged_work / "bucket" / victim.path
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with ThreadPoolExecutor(3) as pool:
        serve = pool.submit(worker, "serve", work)
        damaged = pool.submit(worker, "damaged", damaged_work)
        life = pool.submit(worker, "lifecycle", tmp_path_factory.mktemp("sglang-life"))
        return {"stored": stored, "serve": serve.result(), "damaged": damaged.result(), "life": life.result(),
                "bucket": work / "bucket", "damaged_bucket": damaged_work / "bucket", "victim": victim.key}


def test_the_factory_builds_the_backend_dynamically(runs):
    assert runs["stored"]["backend"] == "pykvstore.integrations.sglang.PyKVStoreHiCache"
    assert runs["serve"]["is_hicache_storage"] and runs["serve"]["factory_class"] == "PyKVStoreHiCache"


def test_a_restarted_server_loads_the_same_pages_bit_exact(runs):
    assert runs["stored"]["stored"] == PAGES * P
    r = runs["serve"]["restarted"]
    assert r == {"hit_tokens": PAGES * P, "loaded_pages": PAGES, "bit_exact": True}


def test_replicas_share_the_bucket_and_layouts_share_pages(runs):
    s = runs["serve"]
    assert s["replica_stored"] == PAGES * P
    assert s["replica_sees_other"] == {"hit_tokens": PAGES * P, "loaded_pages": PAGES, "bit_exact": True}
    # chunks are canonical: a layer_first host pool loads what a page_first one stored, byte for byte
    assert s["layer_first"] == {"hit_tokens": PAGES * P, "loaded_pages": PAGES, "bit_exact": True}


def test_every_supported_host_layout_loads_the_same_pages(runs):
    s = runs["serve"]
    for layout in ("page_first_direct", "page_head"):
        assert s[layout] == {"hit_tokens": PAGES * P, "loaded_pages": PAGES, "bit_exact": True}, layout


def test_mla_pages_are_one_shard_written_by_sglangs_writer_rank(runs):
    m = runs["serve"]["mla"]
    assert m["non_writer_set"] == [True] * 4 and m["after_non_writer"] == 0  # SGLang skips it; nothing written
    assert m["writer_set"] == [True] * 4 and m["other_rank_exists"] == 4
    assert m["other_rank_get"] == [True] * 4 and m["bit_exact"]  # page_first (rank 0) -> layer_first (rank 1)


def test_another_model_tp_shard_or_salt_never_hits(runs):
    s = runs["serve"]
    assert (s["other_model"], s["other_tp_rank"], s["other_tp_size"], s["salted"]) == (0, 0, 0, 0)


def test_batch_exists_counts_leading_consecutive_hits(runs):
    assert runs["serve"]["exists_leading"] == 3
    assert runs["serve"]["exists_all"] == PAGES


def test_bad_input_moves_nothing_and_bad_config_is_a_value_error(runs):
    s = runs["serve"]
    assert s["misaligned"] == [False, False]
    assert s["bad_input_calls"] == [[False, False], [False, False], [False], [False]]
    assert s["config_errors"] == ["SizeError", "ConfigError", "ConfigError"]


def test_the_generic_flat_page_path_loads_the_same_bytes(runs):
    assert runs["serve"]["generic_get"] and runs["serve"]["generic_get_exact"]


def test_a_damaged_chunk_is_a_miss_for_exactly_its_page(runs):
    d = runs["damaged"]
    page = d["chunk_keys"].index(runs["victim"])
    assert d["ok"] == [i != page for i in range(PAGES)]
    assert d["exact"] == [i != page for i in range(PAGES)]  # the others loaded, bit-exact
    assert d["exists_after"] == page  # SGLang now stops before it and recomputes from there
    with kv.Bucket(runs["damaged_bucket"]) as b:
        s = b.stats()
        keys = {r.key for r in b.catalog.rows()}
    assert s.evictions["corrupt"]["chunks"] == 1 and runs["victim"] not in keys
    # SGLang's own file backend, same fault: every page "loads", and the KV is wrong
    assert d["file_stored"] == PAGES * P and d["file_loaded_pages"] == PAGES and not d["file_bit_exact"]


def test_capacity_pins_tags_and_ttl_apply(runs):
    life = runs["life"]
    assert life["pinned_set"] == [True, True]
    assert life["pinned_held"] == 2  # pinned pages survive a later prompt filling the bucket
    assert life["used"] <= life["capacity"]
    assert life["bulk_held_first"] < PAGES  # the bucket had no room for the whole second prompt
    assert life["pinned_chunks"] == 2
    assert life["tags"] == ["bulk", "pinned-prompt"]
    assert life["ttl_stored"] == PAGES * P and life["ttl_before"] == PAGES and life["ttl_after"] == 0


def test_the_bucket_shows_sglang_pages_to_its_owner(runs):
    with kv.Bucket(runs["bucket"]) as b:
        s = b.stats()
    m = s.by_model["test-org/tiny-llama"]
    assert s.chunks == 2 * PAGES and m["hit_tokens"] >= 3 * PAGES * P
    assert "sglang-test" in {t["tag"] for t in s.by_tag}
    assert "prefetch_pgs=[" in runs["serve"]["stats"]["metrics"]
