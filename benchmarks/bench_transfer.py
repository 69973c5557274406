"""Transfer engine benchmark: each figure beside its baseline from the same run.

CPU, every run (Llama-3-8B KV, 32 MiB chunks):
  put through the pipeline (gather into pool buffers -> write threads) vs
  write+fsync of the same bytes; get from a warm page cache, mapped and through
  read buffers, vs reading the same bytes; a mapped load into engine blocks vs
  one memcpy of the same bytes; a cold get by a fresh store (page cache
  dropped) for each cold_read mode (auto, cache, direct), the reloads after it
  (same store, new store) and a cold get in a fresh process, vs the disk's
  limit: parallel O_DIRECT reads, eight buffered readers, and fio at QD32
  where fio is installed (--cold-only: just these, after one put).
GPU, where a CUDA device exists:
  D2H and H2D of 2,048 scattered 32 KiB blocks through the copy engine vs
  (a) one copy of a contiguous pinned buffer of the same size and (b) one
  cudaMemcpyAsync per block; and the time to load 32K tokens of Llama-3-8B KV
  (4 GiB) into paged blocks from the host tier and from a warm page cache.

    python benchmarks/bench_transfer.py [--chunks 16] [--dir /tmp] [--gpu-only | --cpu-only | --cold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pykvstore as kv
from common import BLOCK, CHUNK, best, best_interleaved, llama_cache, warm_file_cache

MODEL = "bench/llama-3-8b"


def cpu_figures(n: int, work: Path, repeat: int) -> dict:
    out: dict = {}
    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)
    blocks = n * CHUNK // BLOCK
    src = kv.PagedKV(llama_cache("2BTHD", blocks + 8), "2BTHD")
    ids = np.random.default_rng(1).permutation(blocks + 8)[:blocks]
    total = n * src.geometry.chunk_bytes(CHUNK)
    payload = np.random.default_rng(2).integers(0, 256, total // n, dtype=np.uint8).tobytes()
    raw = work / "raw"
    raw.mkdir()

    def raw_write():
        for i in range(n):
            with open(raw / f"{i}", "wb", buffering=0) as f:
                f.write(payload)
                os.fsync(f.fileno())

    def store_put():
        shutil.rmtree(work / "bucket", ignore_errors=True)
        with kv.KVStore(work / "bucket", model=MODEL, capacity="64GiB") as s:
            assert s.put(tokens, src, ids) == n * CHUNK
            out["pool_after_put"] = s.stats().pool

    t_raw_w, t_put = best(raw_write, repeat), best(store_put, repeat)
    out["put"] = {"store_GBps": total / t_put / 1e9, "write_fsync_GBps": total / t_raw_w / 1e9,
                  "ratio": t_raw_w / t_put, "target": 0.8}

    files = sorted(str(p) for p in (work / "bucket" / "data").rglob("*.safetensors"))
    raw_files = sorted(str(p) for p in raw.iterdir())
    warm_file_cache(files + raw_files)
    buf = bytearray(total // n + 8192)

    def raw_read():
        for f in raw_files:
            with open(f, "rb", buffering=0) as fh:
                fh.readinto(buf)

    dst_cache = llama_cache("2BTHD", blocks + 8)
    dst = kv.PagedKV(dst_cache, "2BTHD")
    dst_ids = np.random.default_rng(3).permutation(blocks + 8)[:blocks]
    flat_src = torch.ones(total // 2, dtype=torch.int16)
    flat_dst = torch.empty_like(flat_src)
    memcpy = lambda: flat_dst.copy_(flat_src)  # noqa: E731
    for mode in ("auto", "off"):  # mapped, then read buffers
        kv.defaults.set(mmap_read=mode)
        with kv.KVStore(work / "bucket", model=MODEL, host_capacity=1) as s:  # no host tier: every get reads
            t, t_raw_r, t_copy = best_interleaved([lambda: s.get(tokens, dst, dst_ids), raw_read, memcpy], repeat)
            io = s.stats().io
        name = "get_mapped" if mode == "auto" else "get_read_buffers"
        out[name] = {"store_GBps": total / t / 1e9, "read_GBps": total / t_raw_r / 1e9, "ratio": t_raw_r / t,
                     "target": 0.8, "mapped_reads": io["mapped_reads"], "buffered_reads": io["buffered_reads"],
                     "copied_while_verifying": io["copied_while_verifying"]}
        if mode == "auto":
            out["mapped_load_vs_memcpy"] = {"store_GBps": total / t / 1e9, "memcpy_GBps": total / t_copy / 1e9,
                                            "ratio": t_copy / t, "target": 0.7}
    kv.defaults.set(mmap_read="auto")
    for a, b in zip(dst_cache, src.tensors):  # what was loaded is what was stored
        assert torch.equal(a[:, dst_ids], b[:, ids])

    # For the record, what the load costs without its checksum: the mapped
    # copies alone (header parsing and checksum verification left out).
    from pykvstore import _C
    from pykvstore.chunk_file import decode_header

    g, bpc = dst.geometry, CHUNK // BLOCK
    ids_t = torch.as_tensor(dst_ids, dtype=torch.int64)

    def mapped_copies_only():
        for i, f in enumerate(files_in_order):
            m = _C.MappedFile(f, 1 << 31)
            hdr = decode_header(m, len(m))
            payload = torch.frombuffer(m, dtype=torch.uint8, offset=hdr.payload_offset, count=hdr.nbytes)
            dst.scatter(ids_t[i * bpc:(i + 1) * bpc], payload.view(g.view_dtype).view(g.chunk_shape(CHUNK)))

    with kv.KVStore(work / "bucket", model=MODEL, host_capacity=1, geometry=g) as s:
        files_in_order = [str(s.root / r.path) for r in s._catalog.ready_prefix(s.hashes(tokens), time.time())]
    t_only, t_copy = best_interleaved([mapped_copies_only, memcpy], repeat)
    out["mapped_copies_without_checksum"] = {"GBps": total / t_only / 1e9, "ratio_to_memcpy": t_copy / t_only}
    return out


def put_only(n: int, work: Path) -> Path:
    """The bucket cpu_figures leaves (its put), without the other figures: for --cold-only."""
    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)
    blocks = n * CHUNK // BLOCK
    src = kv.PagedKV(llama_cache("2BTHD", blocks + 8), "2BTHD")
    ids = np.random.default_rng(1).permutation(blocks + 8)[:blocks]
    with kv.KVStore(work / "bucket", model=MODEL, capacity="64GiB") as s:
        assert s.put(tokens, src, ids) == n * CHUNK
    return work


def parallel_direct_read(files: list[str], threads: int = 16, request: int = 1 << 20) -> None:
    """The disk's limit without fio: every file read with O_DIRECT in `request`-byte
    pieces by `threads` threads (a queue `threads` deep), into buffers faulted in
    beforehand, so only the device's time is measured."""
    import mmap
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    jobs = [(f, off) for f in files for off in range(0, -(-os.path.getsize(f) // 4096) * 4096, request)]
    fds = {f: os.open(f, os.O_RDONLY | os.O_DIRECT) for f in files}

    def one(job):
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = mmap.mmap(-1, request)
            buf.write(b"\1" * request)
        os.preadv(fds[job[0]], [buf], job[1])

    try:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, jobs))
    finally:
        for fd in fds.values():
            os.close(fd)


def parallel_buffered_read(files: list[str], readers: int = 8, request: int = 1 << 20) -> None:
    """Eight readers through the page cache, each reading whole files in order (`cat` in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(f):
        buf = bytearray(request)
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass

    with ThreadPoolExecutor(readers) as ex:
        list(ex.map(one, files))


def fio_read_GBps(files: list[str]) -> float | None:
    """fio's sequential O_DIRECT read of the same files at queue depth 32, where fio is installed."""
    import subprocess

    if shutil.which("fio") is None:
        return None
    r = subprocess.run(["fio", "--name=seq", "--readonly", "--rw=read", "--bs=1M", "--iodepth=32", "--direct=1",
                        "--ioengine=libaio", "--filename=" + ":".join(files), "--output-format=json"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)["jobs"][0]["read"]["bw_bytes"] / 1e9


def _open(work: Path, mode: str, host_capacity=None) -> "kv.KVStore":
    """A store over the benchmark's bucket with defaults' cold_read = mode (None: the default host tier)."""
    before = kv.defaults.get("cold_read")
    kv.defaults.set(cold_read=mode)
    try:
        return kv.KVStore(work / "bucket", model=MODEL, host_capacity=host_capacity)
    finally:
        kv.defaults.set(cold_read=before)


def _reads(io: dict) -> dict:
    return {"direct": io["direct_reads"], "page_cache": io["mapped_reads"] + io["buffered_reads"] - io["direct_fallbacks"]}


def _await_prefault(s: "kv.KVStore") -> float:
    """Seconds until the store's pool prefault (store/prefault.py) is done: a replica's
    first request comes after its engine loaded the model, while this ran."""
    t0 = time.perf_counter()
    if s._gets.prefault is not None:
        s._gets.prefault.join()
    return time.perf_counter() - t0


def cold_child(work: Path, mode: str, n: int) -> None:
    """One load in a fresh process (a restarted replica): its engine blocks already
    touched (an engine allocates and zeroes them at start), its store opened, then
    the get timed. Prints {"s": seconds, "reads": {...}}."""
    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)
    blocks = n * CHUNK // BLOCK
    layers = [t.zero_() for t in (torch.empty(2, blocks + 8, BLOCK, 8, 128, dtype=torch.bfloat16) for _ in range(32))]
    dst = kv.PagedKV(layers, "2BTHD")
    dst_ids = np.random.default_rng(3).permutation(blocks + 8)[:blocks]
    with _open(work, mode) as s:
        prefault_s = _await_prefault(s)
        t0 = time.perf_counter()
        assert s.get(tokens, dst, dst_ids) == n * CHUNK
        t = time.perf_counter() - t0
        print(json.dumps({"s": t, "reads": _reads(s.stats().io), "prefault_s": prefault_s}))


def cold_figures(n: int, work: Path, repeat: int) -> dict:
    """A cold get (every chunk file dropped from the page cache with fadvise
    DONTNEED, a fresh store: a restarted replica) for each cold_read mode against
    the disk's limit measured in the same run: parallel O_DIRECT reads of the
    same files at queue depth 16, and eight buffered readers. Each round drops
    the cache before every figure and runs every figure once, in an order that
    rotates, so a noisy phase of the shared machine hits all of them; the ratio
    compares the fastest runs, and the spread of each figure is its noise.

    After each mode's cold get: the same data loaded again by the same store
    (its host tier), and by a new store without dropping the cache (a process
    restarted on the same machine: the page cache, where the mode left the
    files there; its pool is new, so its first touch is in the figure). Then
    no host tier (host_capacity=1), where "auto" reads through the page cache,
    and a load from a warm page cache (what "cache" gives a load after the
    host tier let its chunks go, where "auto" reads them cold again). Stores
    other than the new ones stay open, their pools touched by one untimed
    cold get first. Last, a few rounds of one cold get in a fresh process per
    mode (the first touch of a new process's memory included). A new store or
    process waits for its pool prefault (seconds reported) before its get, as a
    replica's first request waits for its engine to load the model."""
    import subprocess
    import sys

    from common import drop_file_cache

    tokens = np.random.default_rng(0).integers(0, 128000, n * CHUNK)  # what cpu_figures stored
    blocks = n * CHUNK // BLOCK
    dst = kv.PagedKV(llama_cache("2BTHD", blocks + 8), "2BTHD")
    dst_ids = np.random.default_rng(3).permutation(blocks + 8)[:blocks]
    files = sorted(str(p) for p in (work / "bucket" / "data").rglob("*.safetensors"))
    total = sum(os.path.getsize(f) for f in files)
    reads: dict[str, dict] = {}
    prefault_s: list[float] = []  # a new store's pool prefault, awaited before its first get

    def cpu_s() -> float:  # this process's CPU seconds, all its threads
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def get_timed(s) -> tuple[float, float]:
        c0, t0 = cpu_s(), time.perf_counter()
        assert s.get(tokens, dst, dst_ids) == n * CHUNK
        return time.perf_counter() - t0, cpu_s() - c0

    # One store per mode, kept open: its pool's pages were faulted in by one
    # untimed cold get first (a fresh process pays that first touch: the
    # new_process figures), and its host tier is emptied before each round.
    stores = {mode: _open(work, mode) for mode in ("auto", "cache", "direct")}
    stores.update({f"{mode}_no_host_tier": _open(work, mode, host_capacity=1) for mode in ("auto", "direct")})
    for s in stores.values():
        drop_file_cache(files)
        get_timed(s)

    def restart(mode: str):
        def run() -> dict[str, tuple[float, float]]:
            s = stores[mode]
            s._host.clear()
            before = _reads(s.stats().io)
            t = {f"store_get_cold_{mode}": get_timed(s)}
            reads[mode] = {k: v - before[k] for k, v in _reads(s.stats().io).items()}
            t[f"reload_{mode}_same_store_host_tier"] = get_timed(s)
            with _open(work, mode) as s2:  # a new store on the same machine: where the mode left the files
                prefault_s.append(_await_prefault(s2))
                t[f"reload_{mode}_new_store"] = get_timed(s2)
            return t
        return run

    def no_host_tier(mode: str):
        def run() -> dict[str, tuple[float, float]]:
            s = stores[f"{mode}_no_host_tier"]
            before = _reads(s.stats().io)
            t = get_timed(s)
            reads[f"{mode}_no_host_tier"] = {k: v - before[k] for k, v in _reads(s.stats().io).items()}
            return {f"store_get_cold_{mode}_no_host_tier": t}
        return run

    def warm_page_cache() -> dict[str, tuple[float, float]]:
        """A load from the page cache (files warm, no host tier): what "cache" gives a
        later load once the host tier has let the chunks go; "auto" reads them cold again."""
        warm_file_cache(files)
        return {"page_cache_warm_get_no_host_tier": get_timed(stores["auto_no_host_tier"])}

    def timed(name, fn):
        def run() -> dict[str, tuple[float, float]]:
            c0, t0 = cpu_s(), time.perf_counter()
            fn()
            return {name: (time.perf_counter() - t0, cpu_s() - c0)}
        return run

    figures = [timed("disk_direct_qd16", lambda: parallel_direct_read(files)),
               timed("disk_buffered_8_readers", lambda: parallel_buffered_read(files)),
               restart("auto"), restart("cache"), restart("direct"), no_host_tier("auto"), no_host_tier("direct"),
               warm_page_cache]
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # on a shared machine the figure that needs more CPU slows down more
    load = [os.getloadavg()[0]]
    try:
        for r in range(repeat):
            for fn in figures[r % len(figures):] + figures[: r % len(figures)]:
                drop_file_cache(files)
                for name, (t, c) in fn().items():
                    times.setdefault(name, []).append(t)
                    cpu.setdefault(name, []).append(c)
            load.append(os.getloadavg()[0])
    finally:
        for s in stores.values():
            s.close()

    # A fresh process per load: the restarted replica, first touch of its memory included.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    for r in range(min(repeat, 3)):
        for mode in ("auto", "cache", "direct"):
            drop_file_cache(files)
            out = subprocess.run([sys.executable, __file__, "--cold-child", mode, "--dir", str(work), "--chunks", str(n)],
                                 capture_output=True, text=True, timeout=600, env=env)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            child = json.loads(out.stdout.strip().splitlines()[-1])
            times.setdefault(f"new_process_get_cold_{mode}", []).append(child["s"])
            prefault_s.append(child["prefault_s"])
            reads[f"{mode}_new_process"] = child["reads"]
    load.append(os.getloadavg()[0])

    out: dict = {"bytes": total, "files": len(files), "rounds": repeat, "io_threads": kv.defaults.get("io_threads"),
                 "inflight": kv.defaults.get("inflight"), "host_capacity": kv.defaults.get("host_capacity"),
                 "load_average_1min_per_round": [round(x, 2) for x in load], "reads_in_the_last_cold_get": reads,
                 "prefault": kv.defaults.get("prefault"), "prefault_s_awaited": [round(x, 2) for x in prefault_s]}
    for name, ts in times.items():
        out[name] = {"best_GBps": round(total / min(ts) / 1e9, 3), "median_GBps": round(total / statistics.median(ts) / 1e9, 3),
                     "all_GBps": [round(total / t / 1e9, 3) for t in ts]}
        if name in cpu:
            out[name]["cpu_s_per_GB"] = round(statistics.median(cpu[name]) / (total / 1e9), 3)
    drop_file_cache(files)
    fio = fio_read_GBps(files)
    out["disk_fio_qd32_GBps"] = fio if fio is not None else "fio not installed: the O_DIRECT baseline stands in"
    limit = max(out["disk_direct_qd16"]["best_GBps"], out["disk_buffered_8_readers"]["best_GBps"], fio or 0)
    limit_median = max(out["disk_direct_qd16"]["median_GBps"], out["disk_buffered_8_readers"]["median_GBps"])
    out["disk_limit_GBps"] = limit
    out["disk_limit_median_GBps"] = limit_median
    for name in times:
        if "cold" in name:
            out[name]["ratio_to_disk_limit"] = round(out[name]["best_GBps"] / limit, 3)
            out[name]["median_ratio_to_disk_limit"] = round(out[name]["median_GBps"] / limit_median, 3)
    out["store_get_cold_auto"]["target"] = 0.9
    return out


def timed_cuda(fn, repeat: int) -> float:
    """Fastest of `repeat` runs, synchronised, after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def gpu_figures(work: Path, repeat: int) -> dict:
    from pykvstore import _C
    from pykvstore.transfer import copy_engine

    out: dict = {"device": torch.cuda.get_device_name()}
    engine = copy_engine(torch.device("cuda"))
    out["batch_api"] = engine.batch_api
    block, count = 32 << 10, 2048
    dev = torch.empty((2 * count, block), dtype=torch.uint8, device="cuda")
    dev.random_(0, 255)
    ids = torch.randperm(2 * count)[:count]
    pool = _C.HostPool(count * block + (8 << 20), pin=True, huge_pages=False)
    host_buf = _C.AlignedBuffer(count * block, pool)
    out["pool_pinned"] = pool.stats()["pinned"]
    host = torch.frombuffer(host_buf, dtype=torch.uint8).view(count, block)
    dev_addrs = [dev.data_ptr() + int(i) * block for i in ids]
    host_addrs = [host_buf.address + j * block for j in range(count)]
    sizes = [block] * count
    stream = torch.cuda.current_stream().cuda_stream
    contiguous = dev[:count]
    nbytes = count * block

    def d2h(batched: bool):
        return lambda: engine.copy(host_addrs, dev_addrs, sizes, stream, batched).wait()

    def h2d(batched: bool):
        return lambda: engine.copy(dev_addrs, host_addrs, sizes, stream, batched).wait()

    for name, batch, loop, one in (
        ("d2h", d2h(True), d2h(False), lambda: host.copy_(contiguous, non_blocking=False)),
        ("h2d", h2d(True), h2d(False), lambda: contiguous.copy_(host, non_blocking=False)),
    ):
        t_batch, t_loop, t_one = (timed_cuda(f, repeat) for f in (batch, loop, one))
        out[name] = {"blocks": count, "block_bytes": block, "engine_GBps": nbytes / t_batch / 1e9,
                     "one_contiguous_copy_GBps": nbytes / t_one / 1e9, "per_block_memcpy_GBps": nbytes / t_loop / 1e9,
                     "vs_contiguous": t_one / t_batch, "vs_per_block": t_loop / t_batch,
                     "targets": {"vs_contiguous": 0.9, "vs_per_block": 3.0}}
    d2h(True)()
    assert torch.equal(host, dev[ids].cpu())

    # 32K tokens of Llama-3-8B KV (4 GiB) into paged blocks
    n_tok = 32 * 1024
    blocks = n_tok // BLOCK
    tokens = np.random.default_rng(0).integers(0, 128000, n_tok)
    src = kv.PagedKV(llama_cache("2BTHD", blocks + 64, "cuda"), "2BTHD")
    dst_cache = llama_cache("2BTHD", blocks + 64, "cuda")
    dst = kv.PagedKV(dst_cache, "2BTHD")
    ids_a = np.random.default_rng(1).permutation(blocks + 64)[:blocks]
    ids_b = np.random.default_rng(2).permutation(blocks + 64)[:blocks]
    total = (n_tok // CHUNK) * src.geometry.chunk_bytes(CHUNK)
    with kv.KVStore(work / "gpu", model=MODEL, capacity="64GiB", host_capacity=total + (256 << 20)) as s:
        t0 = time.perf_counter()
        assert s.put(tokens, src, ids_a) == n_tok
        torch.cuda.synchronize()
        t_put = time.perf_counter() - t0
        t_host = timed_cuda(lambda: s.get(tokens, dst, ids_b), 2)
        assert s.stats().host_hits > 0 and s.stats().pool["pinned"]
    for a, b in zip(dst_cache, src.tensors):
        assert torch.equal(a[:, ids_b], b[:, ids_a])
    warm_file_cache(str(p) for p in (work / "gpu" / "data").rglob("*.safetensors"))
    with kv.KVStore(work / "gpu", model=MODEL, host_capacity=1) as s:
        t_disk = timed_cuda(lambda: s.get(tokens, dst, ids_b), 2)
    out["load_32k_tokens"] = {"bytes": total, "put_from_gpu_s": t_put, "from_host_tier_s": t_host,
                              "from_host_tier_GBps": total / t_host / 1e9, "from_page_cache_s": t_disk,
                              "from_page_cache_GBps": total / t_disk / 1e9}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold-rounds", dest="cold_rounds", type=int, default=7,
                    help="rounds of the cold-read figures (each drops the page cache)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--gpu-only", action="store_true")
    only.add_argument("--cpu-only", action="store_true")
    only.add_argument("--cold-only", action="store_true", help="the cold-read figures only (and the put they read)")
    ap.add_argument("--cold-child", choices=("auto", "cache", "direct"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold_child:  # one cold get in this fresh process (cold_figures runs it)
        cold_child(Path(args.dir), args.cold_child, args.chunks)
        return
    work = Path(tempfile.mkdtemp(prefix="pykvstore-transfer-", dir=args.dir))
    out: dict = {"bench": "transfer", "machine": platform.machine(), "cpus": os.cpu_count(),
                 "cuda_compiled": kv.cuda_compiled, "defaults": kv.defaults.as_dict()}
    try:
        if args.cold_only:
            out["cpu"] = {"cold_get": cold_figures(args.chunks, put_only(args.chunks, work),
                                                   max(args.repeat, args.cold_rounds))}
        elif not args.gpu_only:
            out["cpu"] = cpu_figures(args.chunks, work, args.repeat)
            out["cpu"]["cold_get"] = cold_figures(args.chunks, work, max(args.repeat, args.cold_rounds))
        if not (args.cpu_only or args.cold_only):
            out["gpu"] = (gpu_figures(work, args.repeat) if kv.cuda_available()
                          else "no CUDA device here: GPU figures come from benchmarks/gpu_check.sh")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
