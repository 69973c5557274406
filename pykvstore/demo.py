"""End-to-end demonstration on the embedded default: a local bucket, CPU.

1. A "serving replica" process fills paged KV blocks for a long shared prefix
   (vLLM's CPU layout, BHTC) and stores them in the bucket, then exits.
2. A fresh process (the replica after a restart) asks the bucket how much of
   the prompt it holds, loads it into different blocks of a cache with another
   layout and block size (flash layout, 2BTHD), and checks every byte.
3. The bucket's contents are printed.

The KV values stand in for a model's (seeded, so the checker can regenerate
them); the serving-engine demo with real vLLM replaces them in the engine
integration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

LAYERS, KV_HEADS, HEAD_DIM, DTYPE = 16, 8, 128, torch.bfloat16
PREFIX_TOKENS, CHUNK = 4096, 256
MODEL = "demo/llama-shaped-16L"


def expected_kv(tokens: np.ndarray) -> torch.Tensor:
    """The prefix's KV as (layers, 2, tokens, heads, head_dim), derived from the tokens."""
    g = torch.Generator().manual_seed(int(tokens[:64].sum()))
    return torch.randn(LAYERS, 2, len(tokens), KV_HEADS, HEAD_DIM, generator=g).to(DTYPE)


def prompt() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 32000, PREFIX_TOKENS + 100).astype(np.int64)


def writer(bucket: str) -> None:
    import pykvstore as kv

    bs = 32
    tokens = prompt()
    ref = expected_kv(tokens[:PREFIX_TOKENS])
    nblocks = PREFIX_TOKENS // bs
    caches = [torch.zeros(nblocks + 64, KV_HEADS, bs, 2 * HEAD_DIM, dtype=DTYPE) for _ in range(LAYERS)]
    block_ids = np.random.default_rng(1).permutation(nblocks + 64)[:nblocks]
    for layer, c in enumerate(caches):  # the "engine" writes its paged cache
        for j, b in enumerate(block_ids):
            seg = ref[layer, :, j * bs : (j + 1) * bs]  # (2, bs, H, D)
            c[b] = torch.cat([seg[0], seg[1]], dim=-1).transpose(0, 1)
    with kv.KVStore(bucket, model=MODEL, capacity="2GiB", chunk_tokens=CHUNK) as store:
        t0 = time.perf_counter()
        stored = store.put(tokens, kv.PagedKV(caches, dims="BHTC"), block_ids, tag="demo/system-prompt-v1")
        dt = time.perf_counter() - t0
        s = store.stats()
    print(json.dumps({"process": os.getpid(), "step": "put", "layout": "BHTC block 32",
                      "tokens_stored": stored, "seconds": round(dt, 3),
                      "MB_per_s": round(s.put_bytes_written / dt / 1e6, 1), "io": s.io}))


def reader(bucket: str) -> None:
    import pykvstore as kv

    bs = 16
    tokens = prompt()
    nblocks = len(tokens) // bs + 1
    k = [torch.zeros(2, nblocks + 32, bs, KV_HEADS, HEAD_DIM, dtype=DTYPE) for _ in range(LAYERS)]
    block_ids = np.random.default_rng(2).permutation(nblocks + 32)[:nblocks]
    with kv.KVStore(bucket, model=MODEL, chunk_tokens=CHUNK) as store:
        held = store.lookup(tokens)  # what a scheduler asks, with no tensors at hand
        t0 = time.perf_counter()
        loaded = store.get(tokens, kv.PagedKV(k, dims="2BTHD"), block_ids)
        dt = time.perf_counter() - t0
        s = store.stats()
    ref = expected_kv(tokens[:PREFIX_TOKENS])
    ok = all(
        torch.equal(k[layer][:, block_ids[j]].view(torch.int16), ref[layer, :, j * bs : (j + 1) * bs].view(torch.int16))
        for layer in range(LAYERS) for j in range(loaded // bs)
    )
    print(json.dumps({"process": os.getpid(), "step": "get after restart", "layout": "2BTHD block 16",
                      "prompt_tokens": len(tokens), "lookup": held, "tokens_loaded": loaded,
                      "bit_exact": ok, "seconds": round(dt, 3),
                      "MB_per_s": round(s.get_bytes_read / dt / 1e6, 1), "disk_hits": s.disk_hits}))
    if not ok or loaded != PREFIX_TOKENS:
        raise SystemExit("demo failed: the reloaded KV differs from what was stored")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bucket", default="./demo-bucket")
    p.add_argument("--role", choices=["writer", "reader"])
    args = p.parse_args()
    if args.role == "writer":
        return writer(args.bucket)
    if args.role == "reader":
        return reader(args.bucket)
    shutil.rmtree(args.bucket, ignore_errors=True)
    me = [sys.executable, "-m", "pykvstore.demo", "--bucket", args.bucket]
    print(f"pykvstore demo: bucket {args.bucket}, {LAYERS} layers x {KV_HEADS} kv heads x {HEAD_DIM}, "
          f"{PREFIX_TOKENS}-token prefix, chunks of {CHUNK}")
    subprocess.run(me + ["--role", "writer"], check=True)
    print("replica exited; starting a new process on the same bucket")
    subprocess.run(me + ["--role", "reader"], check=True)
    from .cli import main as cli

    cli(["info", args.bucket])


if __name__ == "__main__":
    main()
