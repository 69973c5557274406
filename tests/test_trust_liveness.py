"""Writer liveness across pid namespaces: recovery reclaims only what the kernel says is dead.

Containers that share a hostname (hostNetwork pods, `--hostname`) see each
other's pids as other processes or none. A recovery that judged a writer by
host:pid reclaimed live writers' rows and temp files. Each writer now holds a
lock on its own lease file; recovery reclaims only leases it can lock.
Uses `unshare --pid --fork` (root; skipped without it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pykvstore as kv
from workers import check, open_store

HERE = Path(__file__).parent
WORKERS = str(HERE / "workers.py")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare --pid")

_HOLD_A_WRITING_ROW = r"""
import os, socket, sys, time
sys.path.insert(0, sys.argv[2])
import pykvstore as kv
from pykvstore.catalog import ChunkRow
from workers import open_store

s = open_store(sys.argv[1])
disk = s.bucket.disk
# the owner a put records: the lease where there is one, else (older versions) host:pid
owner = disk.lease().owner if hasattr(disk, "lease") else f"{socket.gethostname()}:{os.getpid()}"
key = "ab" * 16
row = ChunkRow(key=key, parent="cd" * 16, namespace="cd" * 16, model="mp/model", chunk_index=0, tokens=32,
               nbytes=4096, path=disk.relpath("mp/model", "cd" * 16, key), created=time.time(),
               last_access=time.time(), tag=None, state=0, owner=owner)
reserve = s.bucket.reserve if hasattr(s.bucket, "reserve") else s._reserve
assert reserve(row, ()) is True
print("holding", flush=True)
time.sleep(3600)
"""

_GC_IN_ANOTHER_PID_NAMESPACE = ["unshare", "--pid", "--fork", sys.executable, "-c",
                                "import sys, pykvstore as kv; b = kv.Bucket(sys.argv[1]); b.gc(); b.close()"]


def writing_rows(bucket):
    with kv.Bucket(bucket) as b:
        return [r.key for r in b.catalog.writing_rows()]


def test_a_live_writer_in_another_pid_namespace_is_never_reclaimed(bucket):
    open_store(str(bucket)).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_WRITING_ROW, str(bucket), str(HERE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for _ in range(3):
            subprocess.run(_GC_IN_ANOTHER_PID_NAMESPACE + [str(bucket)], check=True, timeout=120)
        assert writing_rows(bucket) == ["ab" * 16]  # alive: kept
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    subprocess.run(_GC_IN_ANOTHER_PID_NAMESPACE + [str(bucket)], check=True, timeout=120)
    assert writing_rows(bucket) == []  # dead: its lock is gone, so it is reclaimed


def test_puts_survive_recovery_running_in_another_pid_namespace(bucket):
    """The measured failure: a third of the puts came up short while another namespace ran gc."""
    open_store(str(bucket)).close()
    stop = time.monotonic() + 3600
    gc_loop = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c",
                                "import sys, pykvstore as kv\n"
                                "while True:\n"
                                "    b = kv.Bucket(sys.argv[1]); b.gc(); b.close()\n", str(bucket)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, WORKERS, "write", str(bucket), "0", "40"], capture_output=True,
                             text=True, timeout=600, check=True).stdout
    finally:
        gc_loop.send_signal(signal.SIGKILL)
        gc_loop.wait(30)
    stored = [int(line.split()[1]) for line in out.splitlines()]
    assert stored == [96] * 40 and time.monotonic() < stop
    with open_store(str(bucket)) as s:
        assert [check(s, seed) for seed in range(40)] == [96] * 40


def test_a_dead_writers_lease_file_is_swept_and_a_live_ones_kept(bucket):
    open_store(str(bucket)).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_WRITING_ROW, str(bucket), str(HERE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        (bucket / "leases" / f"{'0' * 24}.lease").write_text("a writer that died with nothing in flight\n")
        with kv.Bucket(bucket) as b:
            b.gc()
        assert len(list((bucket / "leases").iterdir())) == 1  # the live holder's
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with kv.Bucket(bucket) as b:
        b.gc()
    assert list((bucket / "leases").iterdir()) == []
