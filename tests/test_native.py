"""The extension's file I/O engine, exercised directly."""

import os
import shutil
import threading

import numpy as np
import pytest
import torch

from pykvstore import _C
from helpers import SPREAD, resident


def fill(size, seed=0):
    buf = _C.AlignedBuffer(size)
    if size:
        t = torch.frombuffer(buf, dtype=torch.uint8)
        t.copy_(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))
    return buf


@pytest.mark.parametrize("size", [1, 199, 4096, 4097, (1 << 20) + 3])
@pytest.mark.parametrize("threads", [1, 3, 16])
@pytest.mark.parametrize("direct", [0, 1])
def test_write_then_read_round_trip(tmp_path, size, threads, direct):
    eng = _C.FileEngine(threads)
    bufs = [fill(size, i) for i in range(5)]
    futs = [eng.write(str(tmp_path / f"f{i}"), str(tmp_path / f".t{i}"), b, size, direct, True) for i, b in enumerate(bufs)]
    assert [f.result() for f in futs] == [size] * 5
    for i, b in enumerate(bufs):
        assert os.path.getsize(tmp_path / f"f{i}") == size
        r = eng.read(str(tmp_path / f"f{i}"), direct, 1 << 30).result().buffer
        assert len(r) == size and bytes(memoryview(r)) == bytes(memoryview(b))
        assert r.address % _C.DIRECT_ALIGNMENT == 0
    assert not list(tmp_path.glob(".t*"))  # temp names are gone after the rename
    c = eng.counters()
    if direct:  # ext4/xfs here take O_DIRECT: it must be the path that ran
        assert c["direct_writes"] == 5 and c["direct_reads"] == 5 and c["direct_fallbacks"] == 0
    else:
        assert c["buffered_writes"] == 5 and c["buffered_reads"] == 5 and c["direct_writes"] == 0


def test_direct_on_is_direct(tmp_path):
    eng = _C.FileEngine(1)
    buf = fill(8192 + 100)
    assert eng.write(str(tmp_path / "a"), str(tmp_path / ".a"), buf, 8192 + 100, 2, True).result() == 8292
    r = eng.read(str(tmp_path / "a"), 2, 1 << 20).result().buffer
    assert bytes(memoryview(r)) == bytes(memoryview(buf))
    c = eng.counters()
    assert (c["direct_writes"], c["direct_reads"], c["buffered_writes"], c["buffered_reads"]) == (1, 1, 0, 0)
    with pytest.raises(ValueError, match="direct mode"):
        eng.read(str(tmp_path / "a"), 3, 1 << 20)


def test_errors_name_the_file_and_operation(tmp_path):
    eng = _C.FileEngine(2)
    with pytest.raises(FileNotFoundError) as e:
        eng.read(str(tmp_path / "missing"), 0, 100).result()
    assert e.value.filename == str(tmp_path / "missing") and "open" in str(e.value)
    (tmp_path / "big").write_bytes(b"x" * 1000)
    with pytest.raises(OSError, match="larger than expected"):
        eng.read(str(tmp_path / "big"), 0, 999).result()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_bytes(b"")
    with pytest.raises(OSError, match="rename"):  # a non-empty directory where the file should go
        eng.write(str(tmp_path / "dir"), str(tmp_path / ".tmp"), fill(10), 10, 0, False).result()
    assert not (tmp_path / ".tmp").exists()  # no partial file left behind
    with pytest.raises(OSError):
        eng.write(str(tmp_path / "nodir" / "f"), str(tmp_path / "nodir" / ".f"), fill(10), 10, 0, False).result()


_WAIT_ON_A_READ = r"""
import sys, threading
from pykvstore import _C

sys.setswitchinterval(1000)  # the GIL changes hands only when its holder lets go, never on a timer
path = sys.argv[1]
eng = _C.FileEngine(1)
go = threading.Event()
seen = []

def watcher():  # runs only once the main thread lets go of the GIL
    go.wait()
    seen.append(fut.done())

t = threading.Thread(target=watcher, daemon=True)
t.start()
fut = eng.read(path, 0, 1 << 31, True)  # a read (and hash) of 512 MiB: far longer than a thread switch
go.set()
fut.result()  # must release the GIL: the watcher then runs while the read is still going
t.join()
print("watcher ran during the wait:", seen == [False])
"""


def test_waiting_releases_the_gil(tmp_path):
    """The main thread waits in result() on a long read while a watcher thread waits
    for the GIL; with the switch interval at 1000 s the watcher only runs when
    result() lets go of it. If result() kept the GIL, the watcher would run only
    after the read ended and see it done. (The engine opens no FIFO any more, so
    a FIFO cannot hold the read: a cache never hangs on one.)"""
    import subprocess
    import sys

    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(512 << 20)  # sparse: read from the page cache's zero pages, no disk
    r = subprocess.run([sys.executable, "-c", _WAIT_ON_A_READ, str(big)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "watcher ran during the wait: True"


def test_cuda_build_matches_the_toolkit():
    """CUDA sources compile exactly where a CUDA compiler was found (CI proves it),
    and the run-time answers agree with the build and with torch."""
    import glob

    expect = bool(shutil.which("nvcc") or os.environ.get("CUDACXX")) and \
        os.environ.get("PYKVSTORE_CUDA", "AUTO").upper() != "OFF"
    assert _C.cuda_compiled == expect, f"nvcc found: {expect}, CUDA sources compiled: {_C.cuda_compiled}"
    n = _C.cuda_device_count()
    if _C.cuda_compiled:
        assert _C.cuda_runtime_version() >= 12000
    else:  # the stub: no runtime, no devices, no pinned memory
        assert (_C.cuda_runtime_version(), n) == (0, 0)
        assert not _C.HostPool(1 << 20, pin=True).stats()["pinned"]
    if torch.version.cuda is not None:
        assert n == (torch.cuda.device_count() if _C.cuda_compiled else 0)
    elif not glob.glob("/dev/nvidia[0-9]*"):
        assert n == 0  # no driver device nodes: nothing to count


@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 31, 32, 33, 100, 4097, (1 << 20) + 5])
def test_xxh64_matches_the_reference_implementation(n):
    xxhash = pytest.importorskip("xxhash")
    data = os.urandom(n)
    assert _C.xxh64(data) == xxhash.xxh64_intdigest(data)
    assert _C.xxh64(b"xx" + data, 2) == xxhash.xxh64_intdigest(data)
    with pytest.raises(IndexError):
        _C.xxh64(data, n + 1)


def test_xxh3_matches_the_reference_implementation():
    """Every length class (0, 1-3, 4-8, 9-16, 17-128, 129-240, then stripes and
    1,024-byte blocks with a partial last stripe or none) against the xxhash package."""
    xxhash = pytest.importorskip("xxhash")
    sizes = list(range(0, 1100)) + [2047, 2048, 2049, 4096 + 63, 65536, (1 << 20) + 5]
    blob = os.urandom(max(sizes) + 3)
    for n in sizes:
        data = blob[3 : 3 + n]  # unaligned start
        assert _C.xxh3_64(data) == xxhash.xxh3_64_intdigest(data), n
    assert _C.xxh3_64(blob, 3, 100) == xxhash.xxh3_64_intdigest(blob[3:103])


def test_xxh3_fed_in_pieces_equals_one_shot():
    """A load hashes a chunk (layer, plane) by (layer, plane): any split must give the file's checksum."""
    rng = np.random.default_rng(7)
    for n in [0, 5, 63, 64, 65, 128, 240, 241, 1000, 1024, 1025, 4096, 70001]:
        data = os.urandom(n)
        for _ in range(25):
            cuts = sorted(int(c) for c in rng.integers(0, n + 1, rng.integers(0, 8)))
            h = _C.Xxh3()
            for lo, hi in zip([0] + cuts, cuts + [n]):
                h.update(data[lo:hi])
            assert h.digest() == _C.xxh3_64(data), (n, cuts)


def test_reads_hash_the_safetensors_payload(tmp_path):
    import struct

    payload = os.urandom(5000)
    (tmp_path / "f").write_bytes(struct.pack("<Q", 10) + b" " * 10 + payload)
    (tmp_path / "bad").write_bytes(struct.pack("<Q", 1 << 40) + payload)
    eng = _C.FileEngine(2)
    r = eng.read(str(tmp_path / "f"), 0, 1 << 20, True).result()
    assert r.payload_hash == _C.xxh3_64(payload)
    assert eng.read(str(tmp_path / "bad"), 0, 1 << 20, True).result().payload_hash is None
    assert eng.read(str(tmp_path / "f"), 0, 1 << 20).result().payload_hash is None


def test_a_buffer_lives_as_long_as_a_tensor_over_it():
    """Host-tier payloads are torch views of engine buffers: memory must not be reused under them."""
    import gc

    _C.set_buffer_cache_limit(1 << 30)
    before = _C.buffer_cache_bytes()
    b = _C.AlignedBuffer(1 << 20)
    view = torch.frombuffer(b, dtype=torch.uint8)[4096:].view(torch.int16)
    del b
    gc.collect()
    assert _C.buffer_cache_bytes() == before
    del view
    gc.collect()
    assert _C.buffer_cache_bytes() == before + (1 << 20)
    c = _C.AlignedBuffer(1 << 20)  # and the next one of that size reuses it
    assert _C.buffer_cache_bytes() == before
    del c


def test_pool_prefault_commits_its_first_pages_and_no_more():
    """HostPool.prefault: the pages its first nbytes live at are resident after it, none
    past them; a live buffer keeps its bytes; a stopped pool (its store closing) does nothing."""
    pool = _C.HostPool(16 << 20, pin=False, huge_pages=False)
    buf = _C.AlignedBuffer(8192, pool)
    memoryview(buf)[:] = b"\xa5" * 8192
    want = (3 << 20) + 1
    assert not any(resident(pool.base + 8192 * SPREAD, 8 << 20))
    done = pool.prefault(want)
    if done == 0:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    assert done == (3 << 20) + 4096  # whole pages
    assert all(resident(pool.base, done * SPREAD))
    assert not any(resident(pool.base + done * SPREAD, 4 << 20))
    assert bytes(memoryview(buf)) == b"\xa5" * 8192
    assert pool.prefault(1 << 40) == 16 << 20  # never past the pool
    other = _C.HostPool(8 << 20, pin=False, huge_pages=False)
    other.stop_prefault()
    assert other.prefault(4 << 20) == 0 and not any(resident(other.base, (8 << 20) * SPREAD))


def test_pool_prefault_runs_without_the_gil_and_stops_between_slices():
    """While one thread prefaults, this one runs Python (the GIL is released), sees the
    first page come in and stops it: it ends a slice or two later, far short of the pool."""
    size = 512 << 20  # 8 slices of 64 MiB (16 under ASan)
    done = []
    # On a loaded machine (or under TSan) the whole pool can be in before this thread is
    # scheduled again: a few tries, each on a fresh pool. With the GIL held, or no stop
    # check between slices, every try runs to the end.
    for _ in range(5):
        pool = _C.HostPool(size, pin=False, huge_pages=False)
        out = []
        t = threading.Thread(target=lambda p=pool: out.append(p.prefault(size)))
        t.start()
        while not resident(pool.base, 4096)[0] and t.is_alive():
            pass
        pool.stop_prefault()
        t.join(60)
        if out == [0]:
            pytest.skip("this kernel has no MADV_POPULATE_WRITE")
        done.append(out[0])
        del pool
        if 0 < done[-1] <= size // 2:
            break
    assert 0 < done[-1] <= size // 2, done


@pytest.mark.parametrize("view", ["reversed", "every-second"])
def test_hashes_refuse_a_buffer_that_is_not_contiguous(view):
    """One pass from the buffer's first item: a reversed view (its first item at its
    last byte) was hashed past its end, a strided one over the bytes between its items."""
    base = np.arange(64, dtype=np.uint8)
    v = base[:32][::-1] if view == "reversed" else base[::2]
    for fn in (_C.xxh3_64, _C.xxh64, _C.xxh3_128):
        with pytest.raises(ValueError, match="not contiguous"):
            fn(v)
        assert fn(np.ascontiguousarray(v)) == fn(v.copy())  # a contiguous copy is hashed as before
