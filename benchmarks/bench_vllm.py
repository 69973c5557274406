"""One workload on real vLLM four ways — no connector, vLLM's ExampleConnector,
pykvstore (loads and stores in the background, the default) and pykvstore
inside the step (async off) — after a restart; prints one JSON object.

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
    elif mode.startswith("pykvstore"):
        background = mode == "pykvstore"
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"bucket": store, "chunk_tokens": 256, "async_load": background,
                                       "async_store": background})
    # Whole prompts in one step: ExampleConnector saves what each step computed under the
    # whole prompt's key, so a prefill split over steps (4,096 tokens a step by default
    # here) stores a short file it later fails to load.
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=8192,
              max_num_batched_tokens=8192, kv_cache_memory_bytes=1 << 30, seed=0, enable_prefix_caching=False,
              **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    for shape, batch in prompts.items():
        ttft, computed = [], 0
        t_all = time.perf_counter()
        for p in batch:
            t0 = time.perf_counter()
            out = llm.generate([TokensPrompt(prompt_token_ids=p)], params, use_tqdm=False)[0]
            ttft.append(time.perf_counter() - t0)
            computed += len(p) - out.num_cached_tokens
        result = {"ttft": ttft, "computed": computed, "requests_per_s": len(batch) / (time.perf_counter() - t_all)}
        print(f"RESULT {shape} " + json.dumps(result), flush=True)  # each shape as it ends: a crash keeps the others


def run(model: str, mode: str, store: str, prompts: dict[str, list[list[int]]], work: Path) -> dict:
    """One engine process over `prompts`: per shape its figures, or {"failed": the error} if it died first."""
    path = work / f"prompts-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(prompts))
    r = subprocess.run([sys.executable, __file__, "--engine", mode, "--model", model, "--store", store,
                        "--prompts", str(path)], capture_output=True, text=True)
    out = {}
    for ln in r.stdout.splitlines():
        if ln.startswith("RESULT "):
            _, shape, data = ln.split(" ", 2)
            out[shape] = json.JSONDecoder().raw_decode(data)[0]  # another process may write on the same line
    if len(out) < len(prompts):
        errors = [ln for ln in r.stderr.splitlines() if "Error" in ln] or r.stderr.splitlines()[-1:]
        print(f"{mode} engine failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        for shape in prompts:
            out.setdefault(shape, {"failed": errors[-1][:400] if errors else f"exit {r.returncode}"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=8000, help="shared prefix tokens (the model takes 8,192 positions)")
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--modes", default="none,example,pykvstore,pykvstore_in_step")
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
    shapes = ("repeat", "shared_prefix")
    measured = {}
    modes = tuple(args.modes.split(","))
    for mode in modes:  # engine 1 warms, engine 2 (a new process) is measured
        store = str(work / mode)
        os.makedirs(store, exist_ok=True)
        run(model, mode, store, {s: traffic(args.prefix, args.requests, s, 1) for s in shapes}, work)
        measured[mode] = run(model, mode, store, {s: traffic(args.prefix, args.requests, s, 2) for s in shapes}, work)
    for shape in shapes:
        row = {}
        for mode in modes:
            r = measured[mode][shape]
            if "failed" in r:
                row[mode] = r
                continue
            row[mode] = {"ttft_p50": statistics.median(r["ttft"]), "ttft_p95": max(r["ttft"]),
                         "prefill_tokens_computed": r["computed"], "requests_per_s": r["requests_per_s"]}
            if mode != "none" and "ttft_p50" in row.get("none", {}):
                row[mode]["ttft_vs_recompute"] = row[mode]["ttft_p50"] / row["none"]["ttft_p50"]
        out["results"][shape] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
