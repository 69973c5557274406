"""Links and special files inside a bucket: one rule, nothing followed, nothing hangs.

The rule (tiers/safe_paths.py): the bucket root may be reached through a link,
but below it no link is followed by any operation (reads, writes, deletes,
scans), and only regular files are read (a FIFO never blocks an I/O thread).
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import time

import pytest

import pykvstore as kv
from helpers import block_table, make_cache
from test_faults import put_three
from workers import sequence


@pytest.fixture(autouse=True)
def watchdog():
    """A hang (an I/O thread stuck opening a FIFO) fails the run instead of stalling CI."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def get(bucket, toks):
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        return s.get(toks, kv.PagedKV(make_cache("BHTC", seed=9), "BHTC"), block_table(12, 24, 4))


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_linked_model_directory_is_refused_everywhere_and_nothing_behind_it_is_touched(tmp_path, read_path):
    bucket = tmp_path / "bucket"
    toks, paths = put_three(bucket)
    model_dir = bucket / "data" / "m"
    outside = tmp_path / "elsewhere"
    shutil.move(str(model_dir), str(outside))
    model_dir.symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    assert get(bucket, toks) == 0  # reads refuse the link: a miss, no exception
    with kv.Bucket(bucket) as b:
        report = b.fsck()
        assert report["ok"] == 0 and report["problems"] >= 1
        assert any("link" in d["error"] for d in report["damaged"])
        b.fsck(repair=True)
    assert tree(outside) == before  # nothing deleted or moved through the link
    assert not model_dir.is_symlink()  # the link itself was set aside
    assert any(p.is_symlink() for p in (bucket / "quarantine").iterdir())
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        toks2, cache, ids = sequence(1)
        assert s.put(toks2, kv.PagedKV(cache, "BHTC"), ids) == 96  # heals in a real directory
    assert tree(outside) == before and not model_dir.is_symlink()


def test_a_rebuild_reports_a_linked_directory_and_indexes_nothing_through_it(tmp_path):
    bucket = tmp_path / "bucket"
    toks, paths = put_three(bucket)
    outside = tmp_path / "elsewhere"
    shutil.move(str(bucket / "data" / "m"), str(outside))
    (bucket / "data" / "m").symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    (bucket / "catalog.sqlite").unlink()
    with kv.Bucket(bucket) as b:
        assert b.stats().chunks == 0
        assert b.fsck()["problems"] == 0  # the link went to quarantine, the scan is clean
    assert tree(outside) == before


def test_a_linked_chunk_file_is_a_miss_and_evict_removes_only_the_link(tmp_path, read_path):
    bucket = tmp_path / "bucket"
    toks, paths = put_three(bucket)
    target = tmp_path / "victim.safetensors"
    shutil.copy(paths[1], target)
    paths[1].unlink()
    paths[1].symlink_to(target)
    assert get(bucket, toks) == 32
    assert target.exists() and target.read_bytes()[:8]  # intact
    toks, paths = put_three(bucket)
    paths[2].unlink()
    paths[2].symlink_to(target)
    with kv.KVStore(bucket, model="m", chunk_tokens=32) as s:
        s.evict(toks)
    assert target.exists() and not os.path.lexists(paths[2])


@pytest.mark.parametrize("where", ["get", "fsck", "rebuild"])
def test_a_fifo_at_a_chunk_path_never_hangs(tmp_path, where, read_path):
    bucket = tmp_path / "bucket"
    toks, paths = put_three(bucket)
    paths[1].unlink()
    os.mkfifo(paths[1])
    if where == "get":
        assert get(bucket, toks) == 32
        assert get(bucket, toks) == 32  # set aside: the next get does not meet it again
    elif where == "fsck":
        with kv.Bucket(bucket) as b:
            report = b.fsck()
            assert [d["key"] for d in report["damaged"]] == [paths[1].stem]
            assert "regular file" in report["damaged"][0]["error"]
    else:
        (bucket / "catalog.sqlite").unlink()
        with kv.Bucket(bucket) as b:
            assert b.stats().chunks == 2  # chunks 0 and 2 indexed, the FIFO set aside
    assert all(not p.name.endswith(".safetensors") or not p.is_fifo() for p in (bucket / "data").rglob("*")) \
        or where == "fsck"


@pytest.mark.parametrize("name", ["data", "tmp", "quarantine"])
def test_a_linked_bucket_subdirectory_is_refused_with_a_clear_error(tmp_path, name):
    bucket = tmp_path / "bucket"
    put_three(bucket)
    elsewhere = tmp_path / f"other-{name}"
    shutil.move(str(bucket / name), str(elsewhere))
    (bucket / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OSError, match="symbolic link"):
        kv.Bucket(bucket)


def test_the_bucket_root_itself_may_be_a_link(tmp_path):
    real = tmp_path / "real"
    toks, _ = put_three(real)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert get(tmp_path / "alias", toks) == 96
    with kv.Bucket(tmp_path / "alias") as b:
        assert b.fsck()["problems"] == 0
