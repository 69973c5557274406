"""Sizing, predicted vs measured: record a trace in a 0 GB bucket, predict, replay through real buckets.

Trace: bench_policy's multi-tenant shape (system prompts of 2K-32K tokens with
Zipf popularity, multi-turn sessions), split over two models of different KV
geometry (so chunks differ in size). Every request does what an engine with
pykvstore does: get its prompt, then put it.

1. Shadow: the trace through `KVStore(capacity=0)` (the 0 GB tier): nothing
   stored, every put recorded. Timed against the same loop through a store
   with recording off and nothing to hold (the baseline: key hashing and the
   call itself), and the history's size per million chunk accesses.
2. Prediction: `Bucket.size()` at 10%, 25% and 50% of the working set: LRU from
   exact stack distances, cost-aware from a replay of the recorded history.
3. Reality: the same trace through real buckets at those capacities, both
   policies; measured token hit rate = tokens `get` loaded / prompt tokens.
4. Growing out of 0: the shadow bucket resized to the recommended capacity,
   the trace again, measured beside predicted.

    python benchmarks/bench_sizing.py [--requests 600] [--prompts 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_policy import BLOCK, make_trace  # noqa: E402

import pykvstore as kv  # noqa: E402
from pykvstore import recorder  # noqa: E402

MODELS = {"tenant-a/llama-8l": 2, "tenant-b/llama-8l-gqa": 1}  # model -> kv heads (chunk sizes differ)


def model_of(i: int) -> str:
    return "tenant-b/llama-8l-gqa" if i % 3 == 0 else "tenant-a/llama-8l"


def caches(max_len: int) -> dict[str, kv.PagedKV]:
    return {m: kv.PagedKV([torch.zeros(max_len // BLOCK + 1, h, BLOCK, 16, dtype=torch.float16)], dims="BHTC")
            for m, h in MODELS.items()}


def run(trace, root: Path, paged: dict, capacity, policy: str = "lru", record: bool = True) -> dict:
    """The trace through one bucket: get, then put, per request; hit tokens per model."""
    stores = {m: kv.KVStore(root, model=m, capacity=capacity, policy=policy, host_capacity=0, record=record)
              for m in paged}
    hit = {m: 0 for m in paged}
    total = {m: 0 for m in paged}
    try:
        t0 = time.perf_counter()
        for i, (p, toks) in enumerate(trace):
            m = model_of(p)
            ids = np.arange(len(toks) // BLOCK)
            hit[m] += stores[m].get(toks, paged[m], ids)
            total[m] += len(toks)
            stores[m].put(toks, paged[m], ids)
        seconds = time.perf_counter() - t0
    finally:
        for s in stores.values():
            s.close()
    return {"token_hit_rate": sum(hit.values()) / sum(total.values()),
            "by_model": {m: hit[m] / total[m] for m in paged}, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    kv.defaults.set(fsync=False)  # hit rates are compared, not the disk
    rng = np.random.default_rng(args.seed)
    toks = make_trace(rng, args.prompts, args.requests)
    # which system prompt each request came from (make_trace keeps them as prefixes)
    prompt_of = []
    firsts: dict[bytes, int] = {}
    for t in toks:
        prompt_of.append(firsts.setdefault(t[:2048].tobytes(), len(firsts)))
    trace = list(zip(prompt_of, toks))
    paged = caches(max(len(t) for t in toks))
    root = Path(tempfile.mkdtemp(prefix="pykvstore-sizing-"))
    out: dict = {"bench": "sizing", "requests": len(trace), "prompts": args.prompts, "models": list(MODELS),
                 "prompt_tokens": int(sum(len(t) for t in toks))}
    try:
        # 1. the 0 GB tier, and its cost against a store that records nothing and holds nothing
        base = run(trace, root / "baseline", paged, 0, record=False)
        shadow = run(trace, root / "shadow", paged, 0)
        hist = root / "shadow" / recorder.FILENAME
        totals = recorder.read_totals(root / "shadow")
        out["shadow"] = {"seconds": shadow["seconds"], "baseline_seconds": base["seconds"],
                         "per_request_overhead_us": 1e6 * (shadow["seconds"] - base["seconds"]) / len(trace),
                         "token_hit_rate": shadow["token_hit_rate"], "recorded_puts": totals.puts,
                         "recorded_chunk_accesses": totals.chunks,
                         "history_bytes": hist.stat().st_size,
                         "history_bytes_per_million_chunk_accesses": hist.stat().st_size / totals.chunks * 1e6,
                         "data_files": sum(1 for p in (root / "shadow").rglob("*.safetensors"))}
        bucket = kv.Bucket(root / "shadow")
        stats = bucket.stats()
        out["shadow"]["would_have_served"] = stats.would_have_served
        ws = bucket.size().working_set
        out["working_set_bytes"] = ws
        caps = {f"{int(f * 100)}%_of_working_set": int(ws * f) for f in (0.1, 0.25, 0.5)}
        pred = {pol: bucket.size(capacities=list(caps.values()), policy=pol) for pol in ("lru", "cost")}
        out["results"] = {}
        worst = {"lru": 0.0, "cost": 0.0}
        for i, (name, cap) in enumerate(caps.items()):
            row = {"capacity_bytes": cap}
            for pol in ("lru", "cost"):
                p = next(r for r in pred[pol].rows if r.capacity == cap)
                m = run(trace, root / f"{pol}-{i}", paged, cap, pol)
                row[pol] = {"predicted": p.hit_rate, "measured": m["token_hit_rate"],
                            "error_pp": 100 * (p.hit_rate - m["token_hit_rate"]),
                            "predicted_by_model": p.by_model, "measured_by_model": m["by_model"]}
                worst[pol] = max(worst[pol], abs(row[pol]["error_pp"]))
            out["results"][name] = row
        out["worst_error_pp"] = worst
        out["targets_pp"] = {"lru": 2.0, "cost": 5.0}
        out["within_targets"] = worst["lru"] <= 2.0 and worst["cost"] <= 5.0
        # 4. growing out of the 0 GB tier: resize the shadow bucket to the recommendation, same traffic again
        report = bucket.size()
        rec = report.recommended
        predicted = next(r.hit_rate for r in bucket.size(capacities=[rec]).rows if r.capacity == rec)
        bucket.resize(rec)
        bucket.close()
        again = run(trace, root / "shadow", paged, None)
        out["resize_from_zero"] = {"recommended_bytes": rec, "predicted": predicted,
                                   "measured": again["token_hit_rate"],
                                   "error_pp": 100 * (predicted - again["token_hit_rate"])}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
