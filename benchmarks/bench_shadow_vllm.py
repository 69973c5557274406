"""What the 0 GB tier costs a real vLLM engine: TTFT with no connector vs the connector on a 0 GB bucket.

Each way runs in its own engine process over the same prompts (vLLM's prefix
cache off, so every token is computed either way); the ways take turns
(none, shadow, none, shadow, ...) so a noisy phase of the machine hits both.
Reported: TTFT p50 per way and run, the shadow/none ratio of the medians, the
tokens served from cache (must be 0: a 0 GB bucket loads nothing), whether the
greedy answers are identical, and what the bucket recorded. On a shared CPU
the runs differ by more than any connector could add, so the connector's own
work per request (lookup + put_async on a 0 GB bucket) is also timed directly
and reported as a fraction of TTFT. Prints one JSON
object. Run with the vLLM venv's Python and the repository on PYTHONPATH:

    PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_shadow_vllm.py [--model-dir ./demo-model] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prompts(n: int, length: int) -> list[list[int]]:
    r = random.Random(3)
    shared = [r.randrange(4096) for _ in range(length // 2)]  # half shared: what a bucket would serve
    return [shared + [r.randrange(4096) for _ in range(length - len(shared))] for _ in range(n)]


def engine(model: str, mode: str, bucket: str, n: int, length: int) -> None:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs = {}
    if mode == "shadow":
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"bucket": bucket, "capacity": 0, "chunk_tokens": 256})
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=8192,
              kv_cache_memory_bytes=1 << 30, seed=0, enable_prefix_caching=False, **kwargs)
    first = SamplingParams(temperature=0.0, max_tokens=1)
    llm.generate([TokensPrompt(prompt_token_ids=prompts(1, 300)[0])], first, use_tqdm=False)  # warm-up
    ttft, cached, answers = [], 0, []
    for p in prompts(n, length):
        t0 = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=p)], first, use_tqdm=False)[0]
        ttft.append(time.perf_counter() - t0)
        cached += out.num_cached_tokens
    for p in prompts(2, length):
        out = llm.generate([TokensPrompt(prompt_token_ids=p)], SamplingParams(temperature=0.0, max_tokens=8),
                           use_tqdm=False)[0]
        answers.append(list(out.outputs[0].token_ids))
    print("RESULT " + json.dumps({"ttft": ttft, "cached": cached, "answers": answers}), flush=True)


def direct(n: int, length: int, reps: int = 50) -> dict:
    """The connector's own work per request on a 0 GB bucket, timed without vLLM's noise.

    What the connector calls per request: `lookup` (scheduler) and `put_async`
    after the prefill (worker), here on the demo model's geometry (8 layers,
    4 KV heads, head dim 64, float32) in the layout vLLM's CPU backend registers.
    Baseline: the same calls on a store with recording off (what any connector
    call costs), and on a real bucket (the 4 GiB a demo gives it).
    """
    import numpy as np
    import torch

    import pykvstore as kv

    bs = 16
    blocks = length // bs + 1
    paged = kv.PagedKV([torch.zeros(blocks, 4, bs, 128) for _ in range(8)], dims="BHTC")
    ids = np.arange(blocks)
    batch = prompts(n, length)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, cap, record in (("shadow", 0, True), ("shadow_unrecorded", 0, False)):
            with kv.KVStore(Path(d) / name, model="demo", capacity=cap, record=record, chunk_tokens=256) as s:
                t0 = time.perf_counter()
                for _ in range(reps):
                    for p in batch:
                        s.lookup(p)
                        s.put_async(p, paged, ids[: -(-len(p) // bs)]).wait()
                out[name + "_us_per_request"] = 1e6 * (time.perf_counter() - t0) / (reps * len(batch))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="./demo-model")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--bucket", help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.engine:
        return engine(args.model_dir, args.engine, args.bucket, args.requests, args.length)
    work = Path(tempfile.mkdtemp(prefix="pykvstore-shadow-"))
    runs: dict[str, list[dict]] = {"none": [], "shadow": []}
    try:
        for _ in range(args.rounds):
            for mode in ("none", "shadow"):
                r = subprocess.run([sys.executable, __file__, "--engine", mode, "--bucket", str(work / "bucket"),
                                    "--model-dir", args.model_dir, "--requests", str(args.requests),
                                    "--length", str(args.length)], capture_output=True, text=True)
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
                    raise SystemExit(f"{mode} engine failed")
                runs[mode].append(json.loads(line[len("RESULT "):]))
        from pykvstore import recorder

        totals = recorder.read_totals(work / "bucket")
        data_files = sum(1 for _ in (work / "bucket").rglob("*.safetensors"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cost = direct(args.requests, args.length)
    p50 = {m: [statistics.median(r["ttft"]) for r in rs] for m, rs in runs.items()}
    med = {m: statistics.median([t for r in rs for t in r["ttft"]]) for m, rs in runs.items()}
    out = {"bench": "shadow_vllm", "requests": args.requests, "prompt_tokens": args.length, "rounds": args.rounds,
           "ttft_p50_per_run_s": p50, "ttft_p50_s": med,
           "shadow_over_none": med["shadow"] / med["none"],
           "run_to_run_spread_none": (max(p50["none"]) - min(p50["none"])) / med["none"],
           "cached_tokens_shadow": sum(r["cached"] for r in runs["shadow"]),
           "answers_identical": all(r["answers"] == runs["none"][0]["answers"] for rs in runs.values() for r in rs),
           "recorded_puts": totals.puts if totals else 0, "data_files": data_files,
           "connector_work": cost,
           "connector_work_over_ttft_p50": cost["shadow_us_per_request"] / 1e6 / med["none"]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
