"""The demos run, and what they print is true.

`python -m pykvstore.demo` (the store alone, `make demo-store`) on a temporary
bucket: each step's own JSON claims are checked, and the bucket it leaves is
read back here, independently, against the KV the demo derives from its tokens.

`pykvstore.demo_vllm` (`make demo`) and `pykvstore.demo_sizing` (`make
demo-sizing`) with real vLLM (.venv-vllm; skipped without it): the token counts
they print are checked against what their workloads must give, and their
buckets are read back here.
"""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import demo, demo_sizing, demo_vllm
from pykvstore.sizes import parse_size

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, python: str = sys.executable, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_store_demo_reloads_what_it_stored_bit_exact(tmp_path):
    bucket = tmp_path / "bucket"
    r = run(["-m", "pykvstore.demo", "--bucket", str(bucket)], tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = {s["step"]: s for s in (json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{"))}
    put, got = steps["put"], steps["get after restart"]
    assert put["process"] != got["process"]  # the reader is a fresh process
    assert put["tokens_stored"] == demo.PREFIX_TOKENS
    assert put["io"]["bytes_written"] > 0 and put["io"]["errors"] == 0
    assert got["lookup"] == got["tokens_loaded"] == demo.PREFIX_TOKENS
    assert got["prompt_tokens"] == demo.PREFIX_TOKENS + 100
    assert got["bit_exact"] is True
    assert got["disk_hits"] == demo.PREFIX_TOKENS // demo.CHUNK
    assert f"{demo.PREFIX_TOKENS // demo.CHUNK} chunks, {demo.PREFIX_TOKENS} tokens" in r.stdout  # `pykvstore info`

    # The bucket, read here: the chunks the demo's writer stored hold the KV it derives from its tokens.
    with kv.Bucket(bucket) as b:
        s = b.stats()
    assert s.chunks == demo.PREFIX_TOKENS // demo.CHUNK
    assert {t["tag"] for t in s.by_tag} == {"demo/system-prompt-v1"}
    tokens = demo.prompt()
    bs = 64
    n = demo.PREFIX_TOKENS // bs
    caches = [torch.zeros(2, n, bs, demo.KV_HEADS, demo.HEAD_DIM, dtype=demo.DTYPE) for _ in range(demo.LAYERS)]
    with kv.KVStore(bucket, model=demo.MODEL, chunk_tokens=demo.CHUNK) as store:
        assert store.get(tokens, kv.PagedKV(caches, dims="2BTHD"), np.arange(n)) == demo.PREFIX_TOKENS
    ref = demo.expected_kv(tokens[: demo.PREFIX_TOKENS])
    for layer, c in enumerate(caches):
        assert torch.equal(c.reshape(2, n * bs, demo.KV_HEADS, demo.HEAD_DIM).view(torch.int16),
                           ref[layer].view(torch.int16)), f"layer {layer}"


# ---- the vLLM demos (`make demo`, `make demo-sizing`), with real vLLM --------------------------
# Each runs end to end, unchanged, on a small Llama-shaped model made here (the demos reuse any
# model already in --model-dir; theirs is 8 layers x 1024, a few minutes of prefill on 2 cores):
# the same engine starts, connector, bucket, restart and resize, in about a minute.

VLLM_PYTHON = os.environ.get("PYKVSTORE_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
needs_vllm = pytest.mark.skipif(not Path(VLLM_PYTHON).exists(),
                                reason="no vLLM environment (make vllm-env builds .venv-vllm)")


def small_model(path: Path) -> Path:
    """A Llama-shaped model with the demos' vocabulary and context (what their workloads need)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=demo_vllm.VOCAB, hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=8192)
    transformers.LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vllm_demos(tmp_path_factory):
    """Both vLLM demos, side by side (each starts its own engines), on one small model."""
    work = tmp_path_factory.mktemp("demos")
    model = small_model(work / "model")
    with ThreadPoolExecutor(2) as pool:
        main = pool.submit(run, ["-m", "pykvstore.demo_vllm", "--bucket", str(work / "bucket"),
                                 "--model-dir", str(model)], work, VLLM_PYTHON)
        sizing = pool.submit(run, ["-m", "pykvstore.demo_sizing", "--bucket", str(work / "sizing-bucket"),
                                   "--model-dir", str(model)], work, VLLM_PYTHON)
        return {"main": main.result(), "sizing": sizing.result(), "work": work}


@needs_vllm
def test_the_vllm_demo_serves_the_prefix_from_the_bucket_after_the_restart(vllm_demos):
    r, work = vllm_demos["main"], vllm_demos["work"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "making a Llama-shaped model" not in r.stdout  # it used the model given
    phases = [tuple(map(int, m)) for m in re.findall(
        r"prompt tokens: (\d+) computed, (\d+) from vLLM's own prefix cache .*?, (\d+) loaded from the bucket",
        r.stdout, re.S)]
    assert len(phases) == 2, r.stdout
    prefix, sessions = demo_vllm.PREFIX_TOKENS, demo_vllm.SESSIONS
    own_tokens = [sum(len(p) - prefix for p in demo_vllm.workload(phase)) for phase in (1, 2)]
    # cold: the first session computes the prefix, the others reuse it from vLLM's own cache
    assert phases[0] == (prefix + own_tokens[0], (sessions - 1) * prefix, 0)
    # restarted: the first session loads the whole prefix from the bucket, nothing of it is recomputed
    assert phases[1] == (own_tokens[1], (sessions - 1) * prefix, prefix)
    assert f"({prefix} hit, " in r.stdout  # the demo's hit-rate line
    with kv.Bucket(work / "bucket") as b:
        s = b.stats()
    assert s.chunks == prefix // 256
    assert {t["tag"] for t in s.by_tag} == {demo_vllm.TAG}
    assert s.by_model[demo_vllm.MODEL_NAME]["hit_tokens"] == prefix


@needs_vllm
def test_the_sizing_demo_measures_what_size_predicted(vllm_demos):
    r, work = vllm_demos["sizing"], vllm_demos["work"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"served from the bucket 0 \(a 0 GB bucket serves nothing\)", r.stdout), r.stdout  # pass 1
    m = re.search(r"served from the bucket (\d+) of (\d+) prompt tokens", r.stdout)  # pass 2
    assert m, r.stdout
    served = (int(m[1]), int(m[2]))
    assert served[1] == sum(len(p) for p in demo_sizing.traffic())
    assert served[0] > 0
    m = re.search(r"predicted token hit rate at (\d+) MiB: ([\d.]+)%; measured: ([\d.]+)%", r.stdout)
    assert m, r.stdout
    predicted, measured = float(m[2]), float(m[3])
    assert measured == pytest.approx(100 * served[0] / served[1], abs=0.05)
    # `pykvstore size` replays the recorded traffic through the same policy at the recommended
    # capacity: the bucket, resized to it, serves what the replay predicted (equal in our runs)
    assert 0 < predicted < 100 and abs(predicted - measured) <= 2, (predicted, measured)
    assert "first tokens identical in both passes: True" in r.stdout  # loaded KV gives the computed answers
    resized = re.search(r"\$ pykvstore resize \S+ (\S+)", r.stdout)
    with kv.Bucket(work / "sizing-bucket") as b:
        s = b.stats()
    assert s.capacity_bytes == parse_size(resized[1]) > 0  # resized, to the recommendation printed
    assert s.chunks > 0 and {t["tag"] for t in s.by_tag} == {demo_sizing.TAG}
