"""Several processes on one bucket: restart, and concurrent writers under a capacity."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pykvstore as kv
from pykvstore.catalog import Catalog
from workers import check, open_store, sequence

WORKERS = str(Path(__file__).parent / "workers.py")


def run(*args) -> str:
    return subprocess.run([sys.executable, WORKERS, *map(str, args)], capture_output=True, text=True, check=True).stdout


def test_put_in_one_process_get_in_another(bucket):
    out = run("write", bucket, 0, 3)
    assert [line.split() for line in out.splitlines()] == [["0", "96"], ["1", "96"], ["2", "96"]]
    with open_store(str(bucket)) as s:  # this process never saw the tensors
        assert [check(s, seed) for seed in range(3)] == [96, 96, 96]
        assert s.stats().disk_hits == 9
    assert run("check", bucket, 0, 1, 2).strip() == str(3 * 96)  # and a third process too


def test_capacity_is_never_exceeded_by_concurrent_writers(bucket):
    with open_store(str(bucket)) as s:  # learn a chunk's size on disk
        toks, cache, ids = sequence(999)
        s.put(toks[:32], kv.PagedKV(cache, "BHTC"), ids)
        chunk = s.stats().used_bytes
        s.evict(toks)
    capacity = 10 * chunk
    peak, samples, stop = [0], [0], threading.Event()

    def watch():
        # What is really on disk, files in flight included. The scan holds the
        # catalog's write lock so no process reserves or evicts while it walks
        # (otherwise a walk that is not a snapshot counts a file deleted behind
        # it and its replacement ahead of it).
        cat = Catalog(str(bucket / "catalog.sqlite"))
        try:
            while not stop.is_set():
                with cat.transaction():
                    total = 0
                    for d in ("data", "tmp"):
                        for p in (bucket / d).rglob("*"):
                            try:
                                total += p.stat().st_size if p.is_file() else 0
                            except FileNotFoundError:
                                pass
                peak[0] = max(peak[0], total)
                samples[0] += 1
                time.sleep(0.002)
        finally:
            cat.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        procs = [subprocess.Popen([sys.executable, WORKERS, "write", str(bucket), str(100 * w), "15", str(capacity)],
                                  stdout=subprocess.PIPE, text=True) for w in range(3)]
        outs = [p.communicate()[0] for p in procs]
    finally:
        stop.set()
        watcher.join()
    assert all(p.returncode == 0 for p in procs)
    stored = [int(line.split()[1]) for out in outs for line in out.splitlines()]
    assert len(stored) == 45 and all(n == 96 for n in stored)  # 3 chunks always fit in 10
    assert samples[0] > 10 and capacity // 2 < peak[0] <= capacity
    with open_store(str(bucket)) as s:
        st = s.stats()
        assert st.used_bytes <= capacity and st.chunks <= 10
        on_disk = sum(p.stat().st_size for p in (bucket / "data").rglob("*.safetensors"))
        assert st.used_bytes == on_disk
        loaded = [check(s, w * 100 + i) for w in range(3) for i in range(15)]
    assert sum(loaded) == st.chunks * 32  # every chunk held is reachable and verifies
