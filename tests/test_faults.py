"""Faults: damaged files, a lost or damaged catalog, a killed writer, a failed write."""

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference, tokens
from workers import check, open_store, sequence

WORKERS = str(Path(__file__).parent / "workers.py")


def chunk_paths(store, toks):
    return [store.root / row.path for row in store._catalog.ready_prefix(store.hashes(toks), time.time())]


def put_three(bucket, model="m"):
    with kv.KVStore(bucket, model=model, chunk_tokens=32) as s:
        toks, cache, ids = sequence(1)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
        return toks, chunk_paths(s, toks)


def damage(path: Path, how: str, bucket: Path) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped_byte":
        data[-100] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) - 1000]
    elif how == "garbage_header":
        data[8:200] = os.urandom(192)
    elif how == "empty":
        data = bytearray()
    elif how == "other_namespace":
        toks, paths = put_three(bucket.parent / "other", model="another-model")
        data = bytearray(paths[1].read_bytes())
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped_byte", "truncated", "garbage_header", "empty", "other_namespace"])
def test_a_damaged_chunk_is_a_miss(bucket, how, caplog, read_path):
    toks, paths = put_three(bucket)
    damage(paths[1], how, bucket)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:  # a fresh process view: nothing in host memory
        dst = make_cache("BHTC", seed=9)
        ids = block_table(12, 24, 4)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 32  # chunk 0 only, no exception
        _, src, src_ids = sequence(1)
        assert torch.equal(reference(dst, "BHTC", ids, 8, 0, 32), reference(src, "BHTC", src_ids, 8, 0, 32))
        assert s.lookup(toks) == 32 and s.stats().corrupt_chunks == 1
        assert not paths[1].exists() and not paths[2].exists()  # moved aside; its unreachable tail dropped
        assert len(list((bucket / "quarantine").iterdir())) == 1
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 32
        assert s.put(toks, kv.PagedKV(src, "BHTC"), src_ids) == 96  # and it heals with the next put
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 96
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "damaged" in r.getMessage()]
    assert len(warnings) == 1


def rewrite_checksum(path: Path, algo, value) -> None:
    """Rewrites a chunk's header as another pykvstore would have written it (same length)."""
    from pykvstore.chunk_file import decode_header, encode_header

    data = path.read_bytes()
    hdr = decode_header(data, len(data))
    meta = {k: v for k, v in hdr.metadata.items() if k != "checksum_algo"}
    if algo is not None:
        meta["checksum_algo"] = algo
    meta["checksum"] = value(data[hdr.payload_offset:])
    head = encode_header(meta, hdr.dtype, hdr.shape, hdr.nbytes)
    assert len(head) == hdr.payload_offset
    path.write_bytes(head + data[hdr.payload_offset:])


@pytest.mark.parametrize("case", ["xxh64_sound", "xxh64_flipped", "unknown_algo"])
def test_chunks_checksummed_with_xxh64_still_load(bucket, case, read_path):
    """Chunks from before XXH3-64 name no algorithm and hold XXH64: they load (verified
    again off the I/O thread), are misses when damaged, and an algorithm this version
    does not know is a miss rather than a trusted load."""
    from pykvstore import _C

    toks, paths = put_three(bucket)
    if case == "unknown_algo":
        rewrite_checksum(paths[1], "sha3-512", lambda p: "0" * 16)
    else:
        rewrite_checksum(paths[1], None, lambda p: f"{_C.xxh64(p):016x}")
    if case == "xxh64_flipped":
        data = bytearray(paths[1].read_bytes())
        data[-100] ^= 0x01
        paths[1].write_bytes(bytes(data))
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        dst = make_cache("BHTC", seed=9)
        ids = block_table(12, 24, 4)
        want = 96 if case == "xxh64_sound" else 32
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == want
        _, src, src_ids = sequence(1)
        assert torch.equal(reference(dst, "BHTC", ids, 8, 0, want), reference(src, "BHTC", src_ids, 8, 0, want))
        assert s.stats().corrupt_chunks == (0 if case == "xxh64_sound" else 1)
    report = kv.Bucket(bucket).fsck()
    assert report["damaged"] == [] and report["ok"] == (3 if case == "xxh64_sound" else 1)


def test_a_vanished_file_is_a_quiet_miss(bucket, caplog):
    toks, paths = put_three(bucket)
    paths[2].unlink()
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        assert s.get(toks, kv.PagedKV(make_cache("BHTC"), "BHTC"), block_table(12, 24)) == 64
        assert s.lookup(toks) == 64 and s.stats().corrupt_chunks == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("how", ["deleted", "garbage"])
def test_the_catalog_is_rebuilt_from_the_files(bucket, how):
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        for seed in (1, 2):
            toks, cache, ids = sequence(seed)
            s.put(toks, kv.PagedKV(cache, "BHTC"), ids, tag=f"tag-{seed}")
        s.put(tokens(64, 7), kv.PagedKV(make_cache("BHTC", dtype=torch.float16), "BHTC"), block_table(8, 24))
        before = s.stats()
    cat = bucket / "catalog.sqlite"
    if how == "deleted":
        cat.unlink()
    else:
        cat.write_bytes(os.urandom(8192))
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        after = s.stats()
        assert (after.chunks, after.used_bytes, after.by_model) == (before.chunks, before.used_bytes, before.by_model)
        assert s.lookup(tokens(64, 7)) == 64  # found without knowing the geometry, as before
        assert check(s, 1) == 96 and check(s, 2) == 96
    with kv.Bucket(bucket) as b:
        assert sorted(t["tag"] for t in b.stats().by_tag) == ["", "tag-1", "tag-2"]


@pytest.mark.parametrize("point", ["reserved", "tmp_partial", "tmp_written", "renamed"])
def test_a_writer_killed_mid_put_leaves_a_clean_bucket(bucket, point):
    """The writer is stopped inside a put at a known point, the state that point
    leaves is checked to be there, then it is killed: the next open reclaims it."""
    import json
    import sqlite3

    from workers import STOP_POINTS

    assert point in STOP_POINTS
    proc = subprocess.Popen([sys.executable, WORKERS, "write_then_stop", str(bucket), point],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[:3] == ["0\n", "1\n", "2\n"], lines
        assert lines[3].startswith("stopped "), lines
        state = json.loads(lines[3][len("stopped "):])
        # what a crash at this point leaves, seen before the kill
        db = sqlite3.connect(f"file:{bucket / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            writing = db.execute("SELECT key, path FROM chunks WHERE state = 0").fetchall()
        finally:
            db.close()
        tmp_files = list((bucket / "tmp").iterdir())
        if point == "renamed":  # later chunks may be reserved and in flight too
            rel = dict(writing)[state["key"]]
            assert (bucket / rel).exists()
        else:  # stopped at the first chunk's write: the only reservation
            assert len(writing) == 1 and not (bucket / writing[0][1]).exists()
            rel = writing[0][1]
        if point.startswith("tmp_"):
            assert rel == state["rel"] and [bucket / state["tmp"]] == tmp_files
            assert tmp_files[0].stat().st_size == state["size"] > 0
        elif point == "reserved":
            assert tmp_files == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open_store(str(bucket)) as s:
        assert s._catalog.writing_rows() == []
        assert list((bucket / "tmp").iterdir()) == []
        assert not any((bucket / r).exists() for _, r in writing)  # uncommitted files are not kept
        assert [check(s, seed) for seed in range(4)] == [96, 96, 96, 0]
        st = s.stats()
        files = list((bucket / "data").rglob("*.safetensors"))
        assert st.chunks == len(files) == 9
        assert st.used_bytes == sum(p.stat().st_size for p in files)


def test_a_failed_write_stores_the_prefix_and_raises_nothing(bucket, caplog):
    toks, cache, ids = sequence(3)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        s.put(toks[:32], kv.PagedKV(cache, "BHTC"), ids)
        keys = s.hashes(toks)
        rel = Path(s._disk.relpath("m", s._catalog.namespaces("m")[0][0], keys[1]))
        blocker = bucket / rel
        blocker.mkdir(parents=True)
        (blocker / "occupied").write_text("x")  # rename onto a non-empty directory fails
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 32
        st = s.stats()
        assert st.put_truncated == 1 and st.chunks == 1
        assert list((bucket / "tmp").iterdir()) == []
        shutil.rmtree(blocker)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    assert any("failed" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs: a disk that really fills up (needs root; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_what_was_committed(small_fs, caplog):
    """A real ENOSPC part way through a put. The catalog shares the full disk, so
    releasing the failed chunk's reservation may fail as well (that flaked once in
    23 runs): a ballast file is freed afterwards and the next put retries the
    release, so every count below is exact."""
    bucket = small_fs / "bucket"
    cache = make_cache("BHTC", hd=128, blocks=64)  # 3 layers x 32 tokens x 2 heads x 256 x 2 B = 96 KiB a chunk
    toks, ids = tokens(32 * 16), block_table(64, 64)
    with kv.KVStore(bucket, model="m", chunk_tokens=32, capacity="1GiB") as s:  # capacity beyond the disk
        ballast = small_fs / "ballast"
        ballast.write_bytes(b"\0" * (256 << 10))
        stored = s.put(toks, kv.PagedKV(cache, "BHTC"), ids)
        assert 0 < stored < len(toks)  # ENOSPC part way: the prefix that made it, no exception
        ballast.unlink()
        assert s.put(toks[:stored], kv.PagedKV(cache, "BHTC"), ids) == stored  # present; retries releases
        st = s.stats()
        files = list((bucket / "data").rglob("*.safetensors"))
        assert st.chunks == len(files) == stored // 32
        assert st.used_bytes == sum(p.stat().st_size for p in files)
        assert s._catalog.writing_rows() == []
        assert list((bucket / "tmp").iterdir()) == []  # no partial chunk anywhere
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        dst = make_cache("BHTC", hd=128, blocks=64, seed=9)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == stored
        assert torch.equal(reference(dst, "BHTC", ids, 8, 0, stored), reference(cache, "BHTC", ids, 8, 0, stored))
    assert any("No space left" in r.getMessage() or "disk is full" in r.getMessage() for r in caplog.records)


def test_an_injected_enospc_keeps_what_was_committed(bucket, one_io_thread, caplog):
    """ENOSPC from the engine's write (half the image already in its temp file) on any
    machine: the 5th chunk fails, so exactly 4 are kept, and nothing else is left."""
    import errno

    cache = make_cache("BHTC", hd=128, blocks=64)
    toks, ids = tokens(32 * 16), block_table(64, 64)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        s.bucket.engine.inject_faults("write", 5, errno.ENOSPC)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 4 * 32
        assert s.bucket.engine.counters()["injected_faults"] >= 1  # later writes in flight may fail too
        st = s.stats()
        files = list((bucket / "data").rglob("*.safetensors"))
        assert st.chunks == len(files) == 4 and st.put_truncated == 1
        assert st.used_bytes == sum(p.stat().st_size for p in files)
        assert s._catalog.writing_rows() == [] and list((bucket / "tmp").iterdir()) == []
        s.bucket.engine.inject_faults("write", 0)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        dst = make_cache("BHTC", hd=128, blocks=64, seed=9)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 4 * 32
        assert torch.equal(reference(dst, "BHTC", ids, 8, 0, 128), reference(cache, "BHTC", ids, 8, 0, 128))
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 16 * 32  # room again: it heals
    assert any("No space left" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_no_memory_to_verify_a_legacy_chunk_is_a_miss_that_keeps_the_chunk(bucket, monkeypatch):
    """A legacy XXH64 chunk loaded from its mapping is verified on a whole-file copy; when that
    allocation fails the load stops short (a miss from there, reported on the handle), nothing
    escapes into the engine, and the chunk is not quarantined: it is sound, memory was short."""
    from pykvstore import _C
    from pykvstore.store.get import GetPipeline

    toks, paths = put_three(bucket)
    rewrite_checksum(paths[1], None, lambda p: f"{_C.xxh64(p):016x}")

    def no_memory(mapped):
        raise MemoryError

    with kv.KVStore(bucket, model="m", chunk_tokens=32, host_capacity=0) as s:
        dst = make_cache("BHTC", seed=9)
        ids = block_table(12, 24, 4)
        with monkeypatch.context() as m:
            m.setattr(GetPipeline, "_whole", staticmethod(no_memory))
            h = s.get_async(toks, kv.PagedKV(dst, "BHTC"), ids)
            assert h.wait() == 32
            assert [e.errno for e in h.errors] == [errno.ENOMEM] and paths[1].name in str(h.errors[0])
        assert s.stats().corrupt_chunks == 0 and paths[1].exists()
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 96  # memory back: the same chunk loads
