"""The vLLM connector's fault and edge paths with real vLLM objects (.venv-vllm; skipped without it).

A process of the vLLM venv (tests/vllm_connector_paths.py) builds vLLM's own
config, resolves the connector through vLLM's factory and makes the calls
vLLM's worker makes each step, with real faults: block ids the registered
cache does not have, the file engine's injected write errors, KV tensors whose
geometry differs from the model config's. Each must end in a miss, a
recompute or a smaller store, with a warning, never an exception into vLLM.
"""

import pytest

from vllm_subprocess import ROOT, needs_vllm, run_script

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-paths")
    return run_script(ROOT / "tests" / "vllm_connector_paths.py", work / "model", work)


def test_the_plugin_registers_once_and_vllm_resolves_the_connector_by_name(paths):
    assert paths["registered_before"]  # vLLM ran the entry point while building its config
    assert paths["resolves_to"] == "PyKVStoreConnector"  # and a second register() left it as it was


def test_a_config_without_a_bucket_is_refused_by_name(paths):
    assert "needs \"bucket\"" in paths["no_bucket"]


def test_every_kv_layout_vllm_registers_is_recognised(paths):
    dims = paths["dims"]
    assert {k: v for k, v in dims.items() if k != "other"} == {d: d for d in ("2BTHD", "B2THD", "BHTC", "BTHC", "BTD")}
    assert dims["other"].startswith("ValueError: unrecognised vLLM KV layout (10, 16, 2, 32)")


def test_tensors_that_disagree_with_the_model_config_win(paths):
    """The store is reopened for the geometry vLLM's tensors have: a store and a load round trip in it."""
    g = paths["geometry"]
    assert (g["config_heads"], g["heads"]) == (2, 4) and g["warned"]
    assert g["failed"] == [] and g["round_trip"]
    assert g["lookup"] == 512  # a lookup without tensors finds what was stored under the tensors' geometry


def test_a_load_that_raises_is_recomputed_not_raised(paths):
    """In the step and in the background: every block of the load is reported failed (vLLM recomputes
    them), one warning each, and the engine call returns."""
    l = paths["loads"]  # noqa: E741
    assert l["stored"] == 512
    assert l["in_step_failed"] == l["background_failed"] == [8, 9, 40, 41]
    assert l["in_step_warned"] == l["background_warned"] == 1


def test_small_loads_run_in_the_step_and_larger_ones_in_the_background(paths):
    """A background load costs its request the rest of the step in flight (300-400 ms on bench_serving's
    loaded server, for loads of 3-20 ms); so loads up to inline_load run before the step's forward pass."""
    p = paths["placement"]
    assert p["auto_fits"] == {"new": 512, "background": False, "in_step_end": 512, "background_loads": []}
    assert p["auto_larger"] == {"new": 512, "background": True, "in_step_end": None, "background_loads": [[0, 512]]}
    # only what vLLM's own cache lacks counts: one chunk fits an inline_load of one chunk
    assert p["auto_part_computed"] == {"new": 256, "background": False, "in_step_end": 512, "background_loads": []}
    assert p["forced_background"]["background"] is True and p["forced_background"]["background_loads"] == [[0, 512]]
    assert p["forced_in_step"] == {"new": 512, "background": False, "in_step_end": 512, "background_loads": []}
    assert "inline_load" in p["bad_size"]


def test_a_store_that_fails_is_a_future_miss_not_an_engine_error(paths):
    assert paths["store_raised"] == {"warned": 1, "held": 0}  # refused before anything was written
    f = paths["store_fault"]  # the write thread met an I/O error on the second chunk
    assert f["held"] == 256  # the chunk before the fault is kept
    assert len(f["warned"]) == 1 and "injected fault" in f["warned"][0]


def test_tenant_views_are_bounded_least_recent_first(paths):
    assert paths["views"] == {"kept": 4096, "oldest_dropped": True, "recent_kept": True, "same_base": True}
