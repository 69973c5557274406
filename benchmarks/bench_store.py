"""Store benchmark: each figure beside its baseline measured in the same run.

Llama-3-8B-shaped KV (32 layers, 8 kv heads, head dim 128, bf16, block 16,
chunk 256 -> 32 MiB a chunk). Prints one JSON object.

    python benchmarks/bench_store.py [--chunks 16] [--dims 2BTHD] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pykvstore as kv
from common import BLOCK, CHUNK, best, drop_file_cache, llama_cache, warm_file_cache
from pykvstore.keys import as_tokens, chunk_keys, namespace_digest

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--dims", default="2BTHD", choices=["2BTHD", "BHTC", "BTHC"])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    n = args.chunks
    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)
    blocks_needed = n * CHUNK // BLOCK
    cache = llama_cache(args.dims, blocks_needed + 8)
    paged = kv.PagedKV(cache, dims=args.dims)
    ids = np.random.default_rng(1).permutation(blocks_needed + 8)[:blocks_needed]
    chunk_bytes = paged.geometry.chunk_bytes(CHUNK)
    total = n * chunk_bytes
    work = Path(tempfile.mkdtemp(prefix="pykvstore-bench-", dir=args.dir))
    out: dict = {"bench": "store", "machine": platform.machine(), "cpus": os.cpu_count(), "dims": args.dims,
                 "chunks": n, "chunk_bytes": chunk_bytes, "total_bytes": total, "defaults": kv.defaults.as_dict()}
    try:
        # --- put vs write+fsync of the same bytes --------------------------------
        payload = np.random.default_rng(2).integers(0, 256, chunk_bytes, dtype=np.uint8).tobytes()
        base_dir = work / "baseline"
        base_dir.mkdir()

        def baseline_write():
            for i in range(n):
                fd = os.open(base_dir / f"{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)

        def store_put():
            b = work / "put"
            shutil.rmtree(b, ignore_errors=True)
            with kv.KVStore(b, model="bench/llama-3-8b", capacity="64GiB", host_capacity=1) as s:
                assert s.put(tokens, paged, ids) == n * CHUNK
                out["io_put"] = s.stats().io

        t_base_w = best(baseline_write, args.repeat)
        t_put = best(store_put, args.repeat)
        out["put"] = {"store_GBps": total / t_put / 1e9, "write_fsync_GBps": total / t_base_w / 1e9,
                      "ratio": t_base_w / t_put, "target": 0.8}

        # --- get from disk, page cache warm, vs reading the same bytes ---------
        bucket = work / "put"
        files = sorted(str(p) for p in (bucket / "data").rglob("*.safetensors"))
        base_files = sorted(str(p) for p in base_dir.iterdir())
        warm_file_cache(files + base_files)
        dst_cache = llama_cache(args.dims, blocks_needed + 8)
        dst = kv.PagedKV(dst_cache, dims=args.dims)
        dst_ids = np.random.default_rng(3).permutation(blocks_needed + 8)[:blocks_needed]
        buf = bytearray(chunk_bytes + 4096)

        def baseline_read():
            for f in base_files:
                with open(f, "rb", buffering=0) as fh:
                    fh.readinto(buf)

        store = kv.KVStore(bucket, model="bench/llama-3-8b", host_capacity=1)

        def store_get():
            assert store.get(tokens, dst, dst_ids) == n * CHUNK

        t_base_r = best(baseline_read, args.repeat)
        t_get = best(store_get, args.repeat)
        out["get_disk_warm"] = {"store_GBps": total / t_get / 1e9, "read_GBps": total / t_base_r / 1e9,
                                "ratio": t_base_r / t_get, "target": 0.8}
        for a, b in zip(dst_cache, cache):  # what was loaded is what was stored
            assert torch.equal(a[:, dst_ids] if args.dims == "2BTHD" else a[dst_ids],
                               b[:, ids] if args.dims == "2BTHD" else b[ids])
        store.close()

        # --- O_DIRECT reads (cold), for the record ---------------------------------
        drop_file_cache(files)
        kv.defaults.set(direct_read="auto")
        with kv.KVStore(bucket, model="bench/llama-3-8b", host_capacity=1) as s:
            t0 = time.perf_counter()
            s.get(tokens, dst, dst_ids)
            t_direct = time.perf_counter() - t0
            out["get_disk_direct"] = {"store_GBps": total / t_direct / 1e9, "io": s.stats().io}
        kv.defaults.set(direct_read="off")

        # --- get from the host tier vs one copy_ --------------------------------
        with kv.KVStore(bucket, model="bench/llama-3-8b", host_capacity=2 * total) as s:
            s.get(tokens, dst, dst_ids)  # fills the host tier
            t_host = best(lambda: s.get(tokens, dst, dst_ids), args.repeat)
            assert s.stats().host_hits >= n * args.repeat
        src = torch.empty(total // 2, dtype=torch.int16)
        dst_flat = torch.empty_like(src)
        src.fill_(1)
        t_copy = best(lambda: dst_flat.copy_(src), args.repeat)
        out["get_host"] = {"store_GBps": total / t_host / 1e9, "copy_GBps": total / t_copy / 1e9,
                           "ratio": t_copy / t_host, "target": 0.7}

        # --- lookup of a 128K-token prefix with every chunk present ----------------
        long_tokens = np.random.default_rng(4).integers(0, 128000, 128 * 1024)
        # tiny geometry (4 MiB for the 8,192 blocks): lookup cost is per chunk; block ids never repeat
        small = [torch.zeros(len(long_tokens) // BLOCK, 1, BLOCK, 16, dtype=torch.bfloat16)]
        with kv.KVStore(work / "lookup", model="bench/lookup", host_capacity=1) as s:
            p = kv.PagedKV(small, dims="BHTC")
            kv.defaults.set(fsync=False)
            held = 0
            for end in range(CHUNK * 64, len(long_tokens) + 1, CHUNK * 64):  # 64 chunks a put
                held = s.put(long_tokens[:end], p, np.arange(end // BLOCK))
            kv.defaults.set(fsync=True)
            assert held == len(long_tokens) and s.lookup(long_tokens) == len(long_tokens)
            # The scheduler asks for every waiting request, every step, with the
            # prompt as it has it: a list, an array.array or a numpy array. The
            # baseline is the list converted the way as_tokens did before it had
            # a native path (np.asarray, then the array path), taking turns with the rest.
            as_list = long_tokens.tolist()
            forms = {"list": as_list, "array_array": array.array("I", as_list), "numpy": long_tokens,
                     "baseline_list_via_np_asarray": None}
            lat: dict[str, list[float]] = {k: [] for k in forms}
            for _ in range(40):
                for name, form in forms.items():
                    t0 = time.perf_counter()
                    held = s.lookup(np.asarray(as_list) if form is None else form)
                    lat[name].append(time.perf_counter() - t0)
                    assert held == len(long_tokens)
        out["lookup_128k"] = {name: {"median_ms": round(statistics.median(v) * 1e3, 3), "min_ms": round(min(v) * 1e3, 3)}
                              for name, v in lat.items()}
        out["lookup_128k"].update({"chunks": len(long_tokens) // CHUNK,
                                   "targets_ms": {"list": 1.0, "array_array": 0.5, "numpy": 0.5}})

        # --- key hashing ---------------------------------------------------------
        toks = as_tokens(np.random.default_rng(5).integers(0, 128000, 1 << 20))
        hashing = {}
        for algo in ("xxh3_128", "sha256"):
            root = namespace_digest({"m": 1}, algo)
            t = best(lambda: chunk_keys(root, toks, CHUNK, algo), args.repeat)
            hashing[algo] = {"tokens_per_s": len(toks) / t}
        t_conv = best(lambda: as_tokens(np.asarray(toks, dtype=np.int64)), args.repeat)
        hashing["token_conversion_tokens_per_s"] = len(toks) / t_conv
        out["hashing"] = hashing
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
