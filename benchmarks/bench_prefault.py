"""A restarted replica's first cold get: the host pool with transparent huge pages or without, prefault on or off.

Each figure is one fresh process (a restarted replica, as bench_transfer.py's
new_process figures): its engine blocks touched, a store opened over the
bucket (cold_read=auto), its pool prefault (store/prefault.py) awaited when on,
then the first cold get timed; then, in the same process, the steady state:
a second cold get (host tier emptied, page cache dropped: the pool's pages
are in by now) and a reload from the host tier. The pool's huge-page setting
is chosen per process by wrapping _C.HostPool before the store makes its pool
(parts.py asks for huge pages). The disk's limit is measured in the same
rounds (parallel O_DIRECT reads, eight buffered readers, bench_transfer.py);
every figure drops the page cache first and the order rotates each round.

    python benchmarks/bench_prefault.py --chunks 16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pykvstore as kv
from bench_transfer import BLOCK, CHUNK, MODEL, parallel_buffered_read, parallel_direct_read, put_only
from common import drop_file_cache

VARIANTS = {  # name: (huge pages, prefault)
    "huge_pages_prefault": (True, "auto"),
    "no_huge_pages_prefault": (False, "auto"),
    "huge_pages_no_prefault": (True, "off"),
    "no_huge_pages_no_prefault": (False, "off"),
}


def child(work: Path, variant: str, n: int) -> None:
    """One fresh process: first cold get, second cold get, host-tier reload; prints seconds as JSON."""
    from pykvstore import _C

    huge, prefault = VARIANTS[variant]
    pool_class = _C.HostPool
    _C.HostPool = lambda capacity, pin=True, huge_pages=True: pool_class(capacity, pin=pin, huge_pages=huge)
    kv.defaults.set(prefault=prefault, cold_read="auto")
    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)
    blocks = n * CHUNK // BLOCK
    layers = [t.zero_() for t in (torch.empty(2, blocks + 8, BLOCK, 8, 128, dtype=torch.bfloat16) for _ in range(32))]
    dst = kv.PagedKV(layers, "2BTHD")
    dst_ids = np.random.default_rng(3).permutation(blocks + 8)[:blocks]
    files = sorted(str(p) for p in (work / "bucket" / "data").rglob("*.safetensors"))
    with kv.KVStore(work / "bucket", model=MODEL) as s:
        t0 = time.perf_counter()
        if s._gets.prefault is not None:
            s._gets.prefault.join()
        out = {"prefault_s": time.perf_counter() - t0, "pool_huge_pages": s.stats().pool["huge_pages"]}
        for name in ("first_cold", "second_cold", "host_reload"):
            if name == "second_cold":
                s._host.clear()
                drop_file_cache(files)
            t0 = time.perf_counter()
            assert s.get(tokens, dst, dst_ids) == n * CHUNK
            out[name] = time.perf_counter() - t0
        out["io"] = {k: s.stats().io[k] for k in ("direct_reads", "buffered_reads", "mapped_reads")}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.dir), args.child, args.chunks)
        return
    work = Path(tempfile.mkdtemp(prefix="pykvstore-prefault-", dir=args.dir))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    times: dict[str, list[float]] = {}
    prefault_s: dict[str, list[float]] = {}
    load = [os.getloadavg()[0]]
    try:
        put_only(args.chunks, work)
        files = sorted(str(p) for p in (work / "bucket" / "data").rglob("*.safetensors"))
        total = sum(os.path.getsize(f) for f in files)

        def disk(name, fn):
            def run():
                t0 = time.perf_counter()
                fn(files)
                times.setdefault(name, []).append(time.perf_counter() - t0)
            return run

        def fresh(variant):
            def run():
                r = subprocess.run([sys.executable, __file__, "--child", variant, "--dir", str(work), "--chunks",
                                    str(args.chunks)], capture_output=True, text=True, timeout=600, env=env)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr[-2000:])
                got = json.loads(r.stdout.strip().splitlines()[-1])
                assert got["pool_huge_pages"] == VARIANTS[variant][0], got
                for k in ("first_cold", "second_cold", "host_reload"):
                    times.setdefault(f"{variant}:{k}", []).append(got[k])
                prefault_s.setdefault(variant, []).append(round(got["prefault_s"], 3))
            return run

        figures = [disk("disk_direct_qd16", parallel_direct_read), disk("disk_buffered_8_readers", parallel_buffered_read)]
        figures += [fresh(v) for v in VARIANTS]
        for r in range(args.rounds):
            for fn in figures[r % len(figures):] + figures[: r % len(figures)]:
                drop_file_cache(files)
                fn()
            load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out: dict = {"bytes": total, "files": len(files), "rounds": args.rounds, "cpus": os.cpu_count(),
                 "load_average_1min_per_round": [round(x, 2) for x in load], "prefault_s_awaited": prefault_s}
    for name, ts in times.items():
        out[name] = {"best_GBps": round(total / min(ts) / 1e9, 3), "median_GBps": round(total / statistics.median(ts) / 1e9, 3),
                     "all_GBps": [round(total / t / 1e9, 3) for t in ts]}
    limit = max(out["disk_direct_qd16"]["best_GBps"], out["disk_buffered_8_readers"]["best_GBps"])
    limit_median = max(out["disk_direct_qd16"]["median_GBps"], out["disk_buffered_8_readers"]["median_GBps"])
    out["disk_limit_GBps"], out["disk_limit_median_GBps"] = limit, limit_median
    for name in times:
        if name.endswith("_cold"):
            out[name]["ratio_to_disk_limit"] = round(out[name]["best_GBps"] / limit, 3)
            out[name]["median_ratio_to_disk_limit"] = round(out[name]["median_GBps"] / limit_median, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
