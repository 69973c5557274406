"""One workload on real vLLM three ways — no connector, vLLM's ExampleConnector,
pykvstore — after a restart; prints one JSON object.

For each way: engine 1 serves the traffic once (warming whatever store it has)
and exits; engine 2, a new process, serves it again and is measured. Two
traffic shapes: a shared prefix with different suffixes (ExampleConnector keys
by the whole prompt, so it cannot hit there) and exact repeats.
TTFT = wall time of a 1-token answer. Run with the vLLM venv's Python and the
repository on PYTHONPATH:

    PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_vllm.py [--prefix 8000] [--requests 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def traffic(prefix_len: int, requests: int, shape: str, seed: int) -> list[list[int]]:
    shared = random.Random(42)
    prefix = [shared.randrange(4096) for _ in range(prefix_len)]
    if shape == "repeat":
        tail = [random.Random(7).randrange(4096) for _ in range(300)]
        return [prefix + tail for _ in range(requests)]
    r = random.Random(seed)
    # suffixes longer than a block (128): a whole-prompt key cannot match another session
    return [prefix + [r.randrange(4096) for _ in range(300)] for _ in range(requests)]


def engine(model: str, mode: str, store: str, prompts: dict[str, list[list[int]]]) -> None:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs = {}
    if mode == "example":
        kwargs["kv_transfer_config"] = KVTransferConfig(kv_connector="ExampleConnector", kv_role="kv_both",
                                                        kv_connector_extra_config={"shared_storage_path": store})
    elif mode == "pykvstore":
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"bucket": store, "chunk_tokens": 256})
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=8192,
              kv_cache_memory_bytes=1 << 30, seed=0, enable_prefix_caching=False, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    results = {}
    for shape, batch in prompts.items():
        ttft, computed = [], 0
        t_all = time.perf_counter()
        for p in batch:
            t0 = time.perf_counter()
            out = llm.generate([TokensPrompt(prompt_token_ids=p)], params, use_tqdm=False)[0]
            ttft.append(time.perf_counter() - t0)
            computed += len(p) - out.num_cached_tokens
        results[shape] = {"ttft": ttft, "computed": computed, "requests_per_s": len(batch) / (time.perf_counter() - t_all)}
    print("RESULT " + json.dumps(results), flush=True)


def run(model: str, mode: str, store: str, prompts: dict[str, list[list[int]]], work: Path) -> dict:
    path = work / f"prompts-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(prompts))
    r = subprocess.run([sys.executable, __file__, "--engine", mode, "--model", model, "--store", store,
                        "--prompts", str(path)], capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{mode} engine failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=8000, help="shared prefix tokens (the model takes 8,192 positions)")
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--engine")
    ap.add_argument("--model")
    ap.add_argument("--store")
    ap.add_argument("--prompts")
    args = ap.parse_args()
    if args.engine:
        return engine(args.model, args.engine, args.store, json.loads(Path(args.prompts).read_text()))

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pykvstore.demo_vllm import make_model

    work = Path(tempfile.mkdtemp(prefix="pykvstore-vllm-bench-"))
    model = str(work / "model")
    make_model(model)
    out: dict = {"bench": "vllm", "prefix_tokens": args.prefix, "requests": args.requests,
                 "model": "Llama-shaped, 8 layers, hidden 1024, float32", "note": "vLLM prefix caching off",
                 "results": {}}
    shapes = ("shared_prefix", "repeat")
    measured = {}
    for mode in ("none", "example", "pykvstore"):  # engine 1 warms, engine 2 (a new process) is measured
        store = str(work / mode)
        os.makedirs(store, exist_ok=True)
        run(model, mode, store, {s: traffic(args.prefix, args.requests, s, 1) for s in shapes}, work)
        measured[mode] = run(model, mode, store, {s: traffic(args.prefix, args.requests, s, 2) for s in shapes}, work)
    for shape in shapes:
        row = {}
        for mode in measured:
            r = measured[mode][shape]
            row[mode] = {"ttft_p50": statistics.median(r["ttft"]), "ttft_p95": max(r["ttft"]),
                         "prefill_tokens_computed": r["computed"], "requests_per_s": r["requests_per_s"]}
        for mode in ("example", "pykvstore"):
            row[mode]["ttft_vs_recompute"] = row[mode]["ttft_p50"] / row["none"]["ttft_p50"]
        out["results"][shape] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
