"""The SGLang HiCache backend's other paths with real SGLang 0.5.23 classes (its venv; skipped without it).

A process of the SGLang venv (tests/sglang_paths.py) drives SGLang's own
controller methods without `interface_v1` (the generic flat-page get/set),
builds backends through SGLang's factory from configs the backend must refuse,
uses one before SGLang registers its host pool, and runs pipeline stages,
storage metrics off and on, and the owner's clear().
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SGLANG_PYTHON = os.environ.get("PYKVSTORE_SGLANG_PYTHON", str(ROOT / ".venv-sglang" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not Path(SGLANG_PYTHON).exists(),
                                reason="no SGLang environment (make sglang-env builds .venv-sglang)")
PAGES, P = 12, 16


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    work = tmp_path_factory.mktemp("sglang-paths")
    r = subprocess.run([SGLANG_PYTHON, str(ROOT / "tests" / "sglang_paths.py"), str(work)], capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_the_generic_page_path_stores_and_loads_bit_exact(paths):
    """SGLang without interface_v1 moves one flat page at a time through get/set; a v1 server reads them too."""
    assert paths["generic_stored"] == PAGES * P
    assert paths["generic_load"] == {"hit_tokens": PAGES * P, "loaded_pages": PAGES, "bit_exact": True}
    assert paths["v1_reads_generic"] == paths["generic_load"]
    assert paths["exists_one"] == [True, False]


def test_empty_and_unusable_calls_answer_without_raising(paths):
    assert paths["empty_calls"] == [0, [], True]
    assert paths["exists_bad_key"] == 0 and paths["exists_bad_key_warned"] == 1


def test_clear_removes_this_backends_pages_for_every_server(paths):
    assert paths["clear"] is True
    assert paths["after_clear"] == [0, 0]


def test_a_backend_used_before_its_host_pool_is_registered_misses(paths):
    assert paths["unregistered"] == {"exists": 0, "get_v1": [False, False], "get": None, "clear": False,
                                     "store": True, "stats": {}, "warned": 1}


def test_unusable_options_are_refused_by_name_before_the_bucket_is_made(paths):
    refused = paths["refused"]
    assert set(refused) == {"ttl_mode", "tag", "hash", "io_threads", "model", "context_parallel"}
    words = {"ttl_mode": "ttl_mode", "tag": "tag must be a string", "hash": "hash must be one of",
             "io_threads": "io_threads", "model": "no model name", "context_parallel": "context-parallel"}
    for name, got in refused.items():
        assert got is not None, name
        kind, message, bucket_made = got
        assert kind == "ConfigError" and words[name] in message and not bucket_made, (name, got)
    kind, message = paths["small_pages"]
    assert kind == "ConfigError" and "page size 2 is below 4" in message


def test_pipeline_stages_keep_their_own_pages(paths):
    assert paths["pp_stored"] == PAGES * P
    assert paths["pp"] == [PAGES * P, 0]  # stage 1 holds other layers: stage 0's pages are not its own


def test_storage_metrics_are_kept_only_when_sglang_reads_them(paths):
    assert paths["metrics_off"] == {"backup_pgs": [], "again": []}
    assert paths["metrics_on"] == {"backup_pgs": [PAGES], "again": []}  # one backup call of 12 pages, drained
