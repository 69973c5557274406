"""A chunk file truncated in place while it is mapped fails that load, never the process.

Loads into host blocks copy from the chunk file's mapping (mmap_read=auto, the
default). A file cut short in place meanwhile (a `cp` over it, another process
truncating it) makes every access past its new end raise SIGBUS; before the
native guard (csrc/sigbus_guard.cpp) that killed the engine with signal 7. Each
case runs in a child process, since the failure being tested is the death of
the process; PYKVSTORE_SIGBUS_GUARD=0 (the guard's handler never installed) is
the control that shows each case really faults.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import _C

from helpers import block_table, make_cache, tokens

HERE = Path(__file__).resolve().parent
N, CT = 8, 32
KW = dict(layers=8, heads=8, hd=128, bs=16, blocks=N * 2 + 4)  # 1 MiB chunks


SANITIZED = bool(os.environ.get("PYKVSTORE_SANITIZED"))  # ASan reports (and aborts on) every SIGBUS it is handed


def run_child(*args: str, guard: bool = True, flags: tuple = (), timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{HERE.parent}{os.pathsep}{HERE}")
    env.pop("PYKVSTORE_SIGBUS_GUARD", None)
    if not guard:
        env["PYKVSTORE_SIGBUS_GUARD"] = "0"
    code = f"import test_sigbus as t, sys; t.{args[0]}(*sys.argv[1:])"
    return subprocess.run([sys.executable, *flags, "-c", code, *args[1:]], capture_output=True, text=True,
                          timeout=timeout, cwd=HERE.parent, env=env)


def put_chunks(bucket: str) -> None:
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        s.put(tokens(N * CT), kv.PagedKV(make_cache("BHTC", seed=1, **KW), "BHTC"), block_table(N * 2, N * 2 + 4, 1))


def expected_chunks() -> list[torch.Tensor]:
    src = kv.PagedKV(make_cache("BHTC", seed=1, **KW), "BHTC")
    ids = torch.as_tensor(block_table(N * 2, N * 2 + 4, 1), dtype=torch.int64)
    return [gather(src, ids, c) for c in range(N)]


def gather(pkv: kv.PagedKV, ids: torch.Tensor, c: int) -> torch.Tensor:
    bpc = CT // KW["bs"]
    chunk = torch.empty(pkv.geometry.chunk_shape(CT), dtype=pkv.geometry.view_dtype)
    pkv.gather(ids[c * bpc : (c + 1) * bpc], chunk)
    return chunk


# --- children -----------------------------------------------------------------

def child_truncated_after_mapping(bucket: str) -> None:
    """A cold get whose first chunk file is cut to half right after the I/O thread maps it."""
    put_chunks(bucket)
    kv.defaults.set(cold_read="cache")  # files just written with O_DIRECT are mapped too, not read
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:  # a new store: nothing in its host tier
        s.bucket.engine.inject_faults("truncate", 1)
        dst = make_cache("BHTC", seed=2, **KW)
        got = s.get(tokens(N * CT), kv.PagedKV(dst, "BHTC"), block_table(N * 2, N * 2 + 4, 2))
        st = s.stats()
        print(json.dumps({"got": got, "corrupt": st.corrupt_chunks, "sigbus": st.io["sigbus_faults"],
                          "mapped": st.io["mapped_reads"]}))


def child_copy_after_truncation(path: str) -> None:
    """MapResult.copy_to (the host tier's copy of a mapped chunk) from a file truncated since it was mapped."""
    payload = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    Path(path).write_bytes(struct.pack("<Q", 4088) + b" " * 4088 + payload)
    r = _C.FileEngine(1).map(path, 1 << 30, True).result()
    buf = _C.AlignedBuffer(len(payload))
    r.copy_to(buf, 4096, len(payload))
    out = {"size": r.size, "header": r.header == struct.pack("<Q", 4088) + b" " * 4088,
           "exact": bytes(memoryview(buf)) == payload, "hash": r.payload_hash == _C.xxh3_64(payload)}
    os.truncate(path, 4096)  # in place: the mapping's pages past the first are gone
    try:
        r.copy_to(buf, 4096, len(payload))
        out["after"] = "copied"
    except OSError as e:
        out["after"] = errno.errorcode.get(e.errno, str(e.errno))
    try:
        r.copy_to(_C.AlignedBuffer(len(payload) + 1), 4096, len(payload) + 1)  # past the end as mapped
    except OSError as e:
        out["beyond"] = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps(out))


def child_unguarded_fault(path: str, faulthandler_after: str) -> None:
    """A SIGBUS outside every guarded range, once the guard's handler is installed: it must still end the
    process the way it did before (through the previous handler), neither swallowed nor looping."""
    Path(path).write_bytes(b"x" * (3 << 12))
    view = memoryview(_C.MappedFile(path, 1 << 20, False))  # a mapping no guard covers
    r = _C.FileEngine(1).map(path, 1 << 20, False).result()
    r.copy_to(bytearray(16), 0, 16)  # installs the handler
    if faulthandler_after == "1":  # a handler installed over ours; the next guarded copy installs ours again
        import faulthandler
        faulthandler.enable()
        r.copy_to(bytearray(16), 0, 16)
    os.truncate(path, 0)
    print("touching", flush=True)
    print(bytes(view[8192:8200]))  # SIGBUS, unguarded
    print("survived", flush=True)


def child_load_loop(bucket: str, seconds: str) -> None:
    """Loads the chunks over and over while the parent truncates and rewrites their files in place.

    Every hit must be byte-exact; a partial load (a chunk found damaged and
    dropped) puts the chunks again so that the files stay there to be loaded.
    """
    want = expected_chunks()
    src = kv.PagedKV(make_cache("BHTC", seed=1, **KW), "BHTC")
    toks = tokens(N * CT)
    ids = block_table(N * 2, N * 2 + 4, 2)
    tids = torch.as_tensor(ids, dtype=torch.int64)
    dst_layers = make_cache("BHTC", seed=2, **KW)
    dst = kv.PagedKV(dst_layers, "BHTC")
    loads = partial = wrong = 0
    kv.defaults.set(cold_read="cache")  # chunks put again (O_DIRECT, cold) are mapped too, not read
    # A host tier of about one chunk: each mapped load also makes the guarded host-tier copy.
    with kv.KVStore(bucket, model="m", chunk_tokens=CT, host_capacity=(1 << 20) + (1 << 19)) as s:
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end:
            for t in dst_layers:
                t.zero_()
            got = s.get(toks, dst, ids)
            loads += 1
            for c in range(got // CT):
                wrong += not torch.equal(gather(dst, tids, c), want[c])
            if got < N * CT:
                partial += 1
                s.put(toks, src, block_table(N * 2, N * 2 + 4, 1))
        st = s.stats()
        print(json.dumps({"loads": loads, "partial": partial, "wrong": wrong, "corrupt": st.corrupt_chunks,
                          "sigbus": st.io["sigbus_faults"], "mapped": st.io["mapped_reads"]}))


# --- tests ----------------------------------------------------------------------

def result_of(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_file_truncated_after_it_is_mapped_is_a_damaged_chunk_not_a_dead_engine(tmp_path):
    r = result_of(run_child("child_truncated_after_mapping", str(tmp_path / "b")))
    # the first chunk faulted in the I/O thread's guarded copy: a miss from there on, quarantined
    # (the loads in flight behind it were mapped, cut and faulted the same way, their results unused)
    assert r["got"] == 0 and r["corrupt"] == 1 and r["sigbus"] == r["mapped"] >= 1, r
    assert len(list((tmp_path / "b" / "quarantine").glob("*.safetensors"))) == 1  # the first one set aside
    if SANITIZED:
        return
    # the control: without the guard the same load dies of the fault
    p = run_child("child_truncated_after_mapping", str(tmp_path / "c"), guard=False)
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stderr[-2000:])


def test_the_host_tiers_copy_from_a_truncated_mapping_fails_cleanly(tmp_path):
    r = result_of(run_child("child_copy_after_truncation", str(tmp_path / "f")))
    assert r == {"size": 4096 + (1 << 20), "header": True, "exact": True, "hash": True, "after": "EIO",
                 "beyond": "EINVAL"}
    if SANITIZED:
        return
    p = run_child("child_copy_after_truncation", str(tmp_path / "g"), guard=False)
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stderr[-2000:])


@pytest.mark.skipif(SANITIZED, reason="ASan reports and aborts on the SIGBUS handed to it, as it should")
@pytest.mark.parametrize("faulthandler_after", ["0", "1"])
def test_a_sigbus_outside_a_guard_still_ends_the_process_through_the_previous_handler(tmp_path, faulthandler_after):
    # -X faulthandler: Python's handler is there before ours and must still report the fault
    p = run_child("child_unguarded_fault", str(tmp_path / "f"), faulthandler_after, flags=("-X", "faulthandler"),
                  timeout=60)  # a handler loop would hang: TimeoutExpired
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "touching" in p.stdout and "survived" not in p.stdout
    assert "Bus error" in p.stderr and "child_unguarded_fault" in p.stderr  # faulthandler's traceback


def test_loads_survive_files_truncated_and_rewritten_in_place_under_them(tmp_path):
    """The reviewer's repro, bounded: a few seconds of in-place truncations under a loading process."""
    bucket = tmp_path / "b"
    put_chunks(str(bucket))
    child = subprocess.Popen([sys.executable, "-c", "import test_sigbus as t, sys; t.child_load_loop(*sys.argv[1:])",
                              str(bucket), "6"], cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=f"{HERE.parent}{os.pathsep}{HERE}"))
    rounds = 0
    try:
        while child.poll() is None:
            files = sorted((bucket / "data").rglob("*.safetensors"))
            for f in files:
                try:
                    with open(f, "r+b") as fh:
                        blob = fh.read()
                        fh.truncate(4096)  # same inode: what a careless truncate or a half-done cp leaves
                        time.sleep(0.001)
                        fh.seek(0)
                        fh.write(blob)
                    rounds += 1
                except FileNotFoundError:  # quarantined by the child (it puts the chunks again)
                    pass
            if not files:
                time.sleep(0.01)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, (child.returncode, rounds, err[-3000:])
    r = json.loads(out.strip().splitlines()[-1])
    assert r["loads"] > 0 and r["mapped"] > 0 and rounds > 0
    assert r["wrong"] == 0, r  # every chunk a load reported held is the chunk that was put
