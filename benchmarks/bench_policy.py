"""Eviction policies on a synthetic multi-tenant trace; prints one JSON object.

Trace: system prompts of 2K-32K tokens with Zipf popularity, sessions that pick
one, add their own messages, and grow over several turns. Every request asks
the bucket for its prompt (get), then stores it (put), as a serving engine
with pykvstore does. The trace is replayed through real buckets at three
capacities for three policies:

    lru                LRU over leaves: tails go before their prefixes (pykvstore's default)
    cost               cost-aware: keeps the most recompute saved per byte
    prefix-first-lru   LRU that evicts a chain's head first (how LMCache behaves)

Reported: token hit rate and recompute avoided (tokens weighted by position,
later tokens cost more to prefill: 1 + position / attention_tokens).

    python benchmarks/bench_policy.py [--requests 600] [--prompts 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pykvstore as kv
from pykvstore.catalog import _COLUMNS, READY, Catalog, ChunkRow

CHUNK, BLOCK, ATTENTION_TOKENS = 256, 16, 8192


class PrefixFirstLRU:
    """The strawman: least recently used chunk first, a chain's head before its tail."""

    name = "prefix-first-lru"

    def choose(self, c: sqlite3.Connection, need: int, protect, model=None) -> list[ChunkRow]:
        chosen = []
        for r in c.execute(f"SELECT {_COLUMNS} FROM chunks WHERE state = {READY} AND pinned = 0 "
                           f"ORDER BY last_access, chunk_index LIMIT ?", (len(protect) + 4096,)):
            row = ChunkRow(*r)
            if row.key in protect:
                continue
            chosen.append(row)
            need -= row.nbytes
            if need <= 0:
                Catalog.delete(c, [x.key for x in chosen])
                return chosen
        return []


def make_trace(rng: np.random.Generator, n_prompts: int, n_requests: int) -> list[np.ndarray]:
    prompts = [rng.integers(0, 32000, int(rng.integers(2048, 32768))) for _ in range(n_prompts)]
    ranks = np.arange(1, n_prompts + 1, dtype=float)
    popularity = ranks ** -1.1
    popularity /= popularity.sum()
    trace: list[np.ndarray] = []
    while len(trace) < n_requests:
        history = prompts[rng.choice(n_prompts, p=popularity)]
        for _ in range(int(rng.integers(1, 5))):  # turns
            history = np.concatenate([history, rng.integers(0, 32000, int(rng.integers(100, 600)))])
            trace.append(history)
            history = np.concatenate([history, rng.integers(0, 32000, int(rng.integers(50, 300)))])
    return trace[:n_requests]


def token_cost(start: int, end: int) -> float:
    """Prefill work of tokens [start, end) relative to one token at position 0."""
    return (end - start) + (end * (end - 1) - start * (start - 1)) / (2 * ATTENTION_TOKENS)


def replay(trace, policy, capacity: int, root: Path, paged: kv.PagedKV) -> dict:
    bucket = root / policy.name
    shutil.rmtree(bucket, ignore_errors=True)
    hit = total = 0
    avoided = full = 0.0
    ids = np.arange(paged.num_blocks)
    with kv.KVStore(bucket, model="bench/policy", capacity=capacity, policy=policy, host_capacity="256MiB") as s:
        t0 = time.perf_counter()
        for toks in trace:
            usable = len(toks) // BLOCK
            got = s.get(toks, paged, ids[:usable])
            hit += got
            total += len(toks)
            avoided += token_cost(0, got)
            full += token_cost(0, len(toks))
            s.put(toks, paged, ids[:usable])
        seconds = time.perf_counter() - t0
        ev = s.stats().bucket.evictions["capacity"]["chunks"]
    return {"token_hit_rate": hit / total, "recompute_avoided": avoided / full, "capacity_evictions": ev,
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kv.defaults.set(fsync=False)  # the policies are compared, not the disk
    trace = make_trace(np.random.default_rng(args.seed), args.prompts, args.requests)
    max_len = max(len(t) for t in trace)
    cache = [torch.zeros(max_len // BLOCK + 1, 1, BLOCK, 16, dtype=torch.float16)]  # tiny KV: policy cost only
    paged = kv.PagedKV(cache, dims="BHTC")
    root = Path(tempfile.mkdtemp(prefix="pykvstore-policy-"))
    chunk_bytes = paged.geometry.chunk_bytes(CHUNK) + 4096
    distinct = len({tuple(t[: (i + 1) * CHUNK]) for t in trace for i in range(len(t) // CHUNK)})
    out: dict = {"bench": "policy", "requests": len(trace), "prompts": args.prompts,
                 "working_set_chunks": distinct, "chunk_bytes": chunk_bytes, "results": {}}
    try:
        for frac in (0.1, 0.25, 0.5):
            capacity = int(distinct * frac) * chunk_bytes
            row = {}
            for policy in (kv.LRU(), kv.CostAware(ATTENTION_TOKENS), PrefixFirstLRU()):
                row[policy.name] = replay(trace, policy, capacity, root, paged)
            best = max(row, key=lambda p: row[p]["recompute_avoided"])
            out["results"][f"{int(frac * 100)}%_of_working_set"] = dict(row, most_recompute_avoided=best)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
