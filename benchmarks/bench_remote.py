"""Shared Redis tier benchmark: prints one JSON object, each figure beside its baseline.

- put/get throughput of the tier for Llama-3-8B-shaped chunks (32 layers, 8 kv
  heads, head dim 128, bf16, 256 tokens = 32 MiB a chunk) beside plain redis-py
  SET/GET of the same bytes, same server, same run (target >= 0.8x);
- time to load a long prefix into engine blocks from the remote tier (a replica
  with an empty bucket) vs from the local disk tier (page cache warm).

Starts its own redis-server on loopback (Debian's redis-server must be installed).

    python benchmarks/bench_remote.py [--chunks 16] [--prefix-tokens 32768] [--prefix-layers 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_servers import RedisServer  # noqa: E402

import pykvstore as kv  # noqa: E402
from common import best  # noqa: E402
from pykvstore.tiers.redis import RedisTier  # noqa: E402

HEADS, HEAD_DIM, BLOCK, CHUNK = 8, 128, 16, 256


def engine(layers: int, tokens: int, seed: int) -> tuple[kv.PagedKV, np.ndarray]:
    blocks = tokens // BLOCK
    g = torch.Generator().manual_seed(seed)
    caches = [torch.randn(2, blocks + 8, BLOCK, HEADS, HEAD_DIM, generator=g).to(torch.bfloat16) for _ in range(layers)]
    ids = np.random.default_rng(seed).permutation(blocks + 8)[:blocks]
    return kv.PagedKV(caches, dims="2BTHD"), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--prefix-tokens", type=int, default=32768)
    ap.add_argument("--prefix-layers", type=int, default=8,
                    help="layers of the long-prefix test (32K tokens x 32 layers is 4 GiB; scale from this)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    kv.defaults.set(fsync=False)

    work = Path(tempfile.mkdtemp(prefix="pykvstore-remote-"))
    server = RedisServer(workdir=work)
    out: dict = {"bench": "remote", "chunk_tokens": CHUNK}
    try:
        # --- tier throughput vs plain redis-py --------------------------------
        paged, ids = engine(32, args.chunks * CHUNK, 0)
        tokens = np.random.default_rng(1).integers(0, 128000, args.chunks * CHUNK)
        with kv.KVStore(work / "src", model="bench/llama-3-8b") as src:
            src.put(tokens, paged, ids)
            keys = src.hashes(tokens)
            files = [work / "src" / r.path for r in src._catalog.ready_prefix(keys, time.time())]
        values = [f.read_bytes() for f in files]
        total = sum(len(v) for v in values)
        tier = RedisTier(server.url, prefix="bench")
        client = tier.client

        def plain_set():
            for k, v in zip(keys, values):
                client.set(f"plain:{k}", v)

        def plain_get():
            for k in keys:
                client.get(f"plain:{k}")

        def tier_put():
            for k, v in zip(keys, values):
                tier.put(k, v, None, {"model": "bench"})
            tier.flush(600)

        t_set, t_put = best(plain_set, args.repeat), best(tier_put, args.repeat)
        t_get, t_mget = best(plain_get, args.repeat), best(lambda: tier.get_many(keys), args.repeat)
        out["put"] = {"tier_GBps": total / t_put / 1e9, "redis_py_set_GBps": total / t_set / 1e9,
                      "ratio": t_set / t_put, "target": 0.8, "chunk_bytes": len(values[0])}
        out["get"] = {"tier_GBps": total / t_mget / 1e9, "redis_py_get_GBps": total / t_get / 1e9,
                      "ratio": t_get / t_mget, "target": 0.8}
        client.flushall()
        tier.close()
        del values

        # --- a long prefix: remote vs local disk ---------------------------------
        n = args.prefix_tokens
        paged, ids = engine(args.prefix_layers, n, 2)
        dst, dst_ids = engine(args.prefix_layers, n, 3)
        tokens = np.random.default_rng(4).integers(0, 128000, n)
        with kv.KVStore(work / "a", model="bench/prefix", remote=server.url) as a:
            assert a.put(tokens, paged, ids) == n
            a._remote.flush(600)
            local_bytes = a.stats().used_bytes

        def from_remote():
            shutil.rmtree(work / "b", ignore_errors=True)
            with kv.KVStore(work / "b", model="bench/prefix", remote=server.url, host_capacity=1) as b:
                t0 = time.perf_counter()
                assert b.get(tokens, dst, dst_ids) == n
                from_remote.seconds = time.perf_counter() - t0

        def from_disk():
            with kv.KVStore(work / "a", model="bench/prefix", host_capacity=1) as a:
                t0 = time.perf_counter()
                assert a.get(tokens, dst, dst_ids) == n
                from_disk.seconds = time.perf_counter() - t0

        remote_s, disk_s = [], []
        for _ in range(args.repeat):
            from_remote()
            remote_s.append(from_remote.seconds)
            from_disk()
            disk_s.append(from_disk.seconds)
        out["prefix_hit"] = {"tokens": n, "layers": args.prefix_layers, "bytes": local_bytes,
                             "remote_seconds": min(remote_s), "local_disk_seconds": min(disk_s),
                             "remote_over_disk": min(remote_s) / min(disk_s),
                             "llama3_8b_32_layers_bytes": local_bytes * 32 // args.prefix_layers}
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
