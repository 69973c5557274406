"""Error paths of the bucket and of the store's smaller branches (issue 19): a rebuild and an
fsck meeting bad files (truncated, foreign, a FIFO, a socket, a directory, a misplaced
copy, another chunk's bytes), bucket.json that cannot be read or saved, an access history
that is not a database, catalog reads refused, and the store's input and reporting edges.

Catalog reads are refused by SQLite itself: an authorizer on the store's connection denies
the read of one table (SQLite answers 'access ... is prohibited', a sqlite3.DatabaseError
like any other a damaged or unreadable catalog raises). The code under test is unchanged.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import torch

import pykvstore as kv
from pykvstore.errors import ConfigError, InputError
from pykvstore.sizing import SizingError
from pykvstore.store.faults import detached
from helpers import block_table, make_cache, reference, tokens
from workers import args, check, load_verified, open_store, sequence


def warned(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def chunk_paths(store, seed: int) -> list[Path]:
    return [store.root / r.path for r in store._catalog.ready_prefix(store.hashes(sequence(seed)[0]), time.time())]


def refuse_reads(store, table: str, times: int = 1 << 30) -> list[int]:
    """SQLite refuses the next `times` reads of `table` on the store's connection; returns the count of refusals."""
    refused = [0]

    def auth(action, arg1, arg2, db, source):
        if action == sqlite3.SQLITE_READ and arg1 == table and refused[0] < times:
            refused[0] += 1
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    store._catalog._conn.set_authorizer(auth)
    return refused


def allow_reads(store) -> None:
    store._catalog._conn.set_authorizer(None)


# --- 5. a rebuild and an fsck meeting bad files ------------------------------------------------

def plant_bad_files(bucket: Path, monkeypatch) -> tuple[dict[str, Path], socket.socket]:
    """Sequences 1 and 2 stored, then beside and among their chunk files: a truncated chunk
    (sequence 2's last), a foreign safetensors file, a sound chunk copied where its header does
    not place it, a FIFO, a socket, an empty file and a directory, each named like a chunk."""
    with open_store(str(bucket)) as s:
        assert s.put(*args(1)) == 96 and s.put(*args(2)) == 96
        p1, p2 = chunk_paths(s, 1), chunk_paths(s, 2)
    nsdir = p1[0].parents[2]
    bad = {}
    p2[2].write_bytes(p2[2].read_bytes()[:100])  # truncated inside its header
    bad["truncated"] = p2[2]
    from safetensors.torch import save_file

    foreign = nsdir / "ab" / "cd" / ("ab" + "cd" * 15 + ".safetensors")
    foreign.parent.mkdir(parents=True)
    save_file({"x": torch.zeros(4)}, str(foreign), metadata={"format": "pt"})
    bad["foreign"] = foreign
    misplaced = nsdir.parent / ("f" * 32) / p1[1].relative_to(nsdir)
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(p1[1].read_bytes())
    bad["misplaced"] = misplaced
    odd = nsdir / "ef" / "01"
    odd.mkdir(parents=True)
    os.mkfifo(odd / ("ef01" * 8 + ".safetensors"))
    bad["fifo"] = odd / ("ef01" * 8 + ".safetensors")
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(odd)  # a socket's path is limited to 107 bytes: bind it by name
    sock.bind("ef02" * 8 + ".safetensors")
    monkeypatch.undo()
    bad["socket"] = odd / ("ef02" * 8 + ".safetensors")
    (odd / ("ef03" * 8 + ".safetensors")).mkdir()  # a directory: not a chunk file, left alone
    (odd / ("ef04" * 8 + ".safetensors")).write_bytes(b"")
    bad["empty"] = odd / ("ef04" * 8 + ".safetensors")
    return bad, sock


def test_a_rebuild_meets_bad_files_and_indexes_only_sound_chunks(bucket, caplog, monkeypatch):
    bad, sock = plant_bad_files(bucket, monkeypatch)
    try:
        (bucket / "catalog.sqlite").unlink()
        with open_store(str(bucket)) as s:  # rebuilt from the files: no hang, no exception
            assert s.stats().chunks == 3 + 2
            assert check(s, 1) == 96 and check(s, 2) == 64
            for what, p in bad.items():
                assert not os.path.lexists(p), what  # moved aside
            assert len(list((bucket / "quarantine").iterdir())) == len(bad)
            assert [r.path for r in s._catalog.rows() if "f" * 32 in r.path] == []
        with kv.Bucket(bucket) as b:
            report = b.fsck()
            assert report["problems"] == 0 and report["ok"] == 5
    finally:
        sock.close()
    assert warned(caplog, "is not a valid chunk")


def test_fsck_repair_meets_bad_files_and_sets_each_aside(bucket, monkeypatch):
    bad, sock = plant_bad_files(bucket, monkeypatch)
    try:
        with kv.Bucket(bucket) as b:
            report = b.fsck()
            assert sorted(d["path"] for d in report["damaged"]) == sorted(
                str(p.relative_to(bucket)) for p in bad.values())
            assert report["ok"] == 5 and report["unindexed"] == [] and not report["repaired"]
            assert all(os.path.lexists(p) for p in bad.values())  # a check alone changes nothing
            report = b.fsck(repair=True)
            assert report["repaired"] and b.fsck()["problems"] == 0
        assert not any(os.path.lexists(p) for p in bad.values())
        assert len(list((bucket / "quarantine").iterdir())) == len(bad)
        with open_store(str(bucket)) as s:
            assert check(s, 1) == 96 and check(s, 2) == 64
    finally:
        sock.close()


def test_fsck_finds_a_file_holding_another_chunk_and_repair_drops_its_chain(bucket):
    with open_store(str(bucket)) as s:
        assert s.put(*args(1)) == 96 and s.put(*args(2)) == 96
        p1 = chunk_paths(s, 1)
        k2 = s.hashes(sequence(2)[0])
    p1[1].write_bytes(p1[0].read_bytes())  # sound bytes of chunk 0, at chunk 1's place
    with kv.Bucket(bucket) as b:
        with b.catalog.transaction() as c:
            c.execute("DELETE FROM chunks WHERE key = ?", (k2[2],))  # one file the catalog lacks
        seen = []
        report = b.fsck(progress=lambda i, total: seen.append((i, total)))
        assert [d["path"] for d in report["damaged"]] == [str(p1[1].relative_to(bucket))]
        assert "another chunk" in report["damaged"][0]["error"]
        assert len(report["unindexed"]) == 1 and report["ok"] == 4
        assert [i for i, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1] == (6, 6)  # 5 rows, then the 1 file no row names
        report = b.fsck(repair=True)
        assert report["repaired"] and b.fsck()["problems"] == 0
    quarantined = list((bucket / "quarantine").iterdir())  # kept for inspection, not deleted
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == p1[0].read_bytes()
    with open_store(str(bucket)) as s:
        assert check(s, 1) == 32 and check(s, 2) == 96


# --- bucket.json that cannot be read or saved ----------------------------------------------------

def test_bucket_json_that_is_a_link_or_a_fifo_is_a_clear_error(tmp_path):
    root = tmp_path / "b"
    kv.Bucket(root).close()
    cfg = root / "bucket.json"
    real = root / "real.json"
    os.replace(cfg, real)
    cfg.symlink_to(real)
    with pytest.raises(ConfigError, match="cannot be opened as a regular file"):
        kv.Bucket(root)
    cfg.unlink()
    os.mkfifo(cfg)
    with pytest.raises(ConfigError, match="not a regular file"):
        kv.Bucket(root)
    cfg.unlink()
    os.replace(real, cfg)
    kv.Bucket(root).close()


def test_a_failed_save_of_bucket_json_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    """ENOSPC from the rename (injected: os.replace of the settings file): the setting is
    refused with the error, the old file stays whole, and no temp file is left."""
    root = tmp_path / "b"
    with kv.Bucket(root, capacity="1GiB") as b:
        before = (root / "bucket.json").read_bytes()
        real = os.replace

        def replace(src, dst, *a, **k):
            if str(dst).endswith("bucket.json"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError):
            b.resize("2GiB")
        monkeypatch.setattr(os, "replace", real)
        assert (root / "bucket.json").read_bytes() == before
        assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("field,value,named", [("price_per_mtok", -1, "price_per_mtok"),
                                               ("ttl_mode", "weekly", "ttl_mode")])
def test_a_bucket_json_field_out_of_range_is_named(tmp_path, field, value, named):
    import json

    root = tmp_path / "b"
    kv.Bucket(root).close()
    cfg = json.loads((root / "bucket.json").read_text())
    cfg[field] = value
    (root / "bucket.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=named):
        kv.Bucket(root)


def test_opening_with_ttl_none_clears_the_default_ttl(tmp_path):
    root = tmp_path / "b"
    kv.Bucket(root, ttl="1h").close()
    with kv.Bucket(root) as b:
        assert b.config["default_ttl"] == 3600
    with kv.Bucket(root, ttl=None) as b:
        assert b.config["default_ttl"] is None


@pytest.mark.parametrize("call", [
    lambda b: kv.Bucket(b, ttl_mode="weekly"),
    lambda b: kv.Bucket(b, price_per_mtok=-0.5),
    lambda b: kv.Bucket(b).set_quota("", "1GiB"),
    lambda b: kv.Bucket(b).ls(sort="colour"),
    lambda b: kv.Bucket(b).clear(created_before=True),
    lambda b: kv.Bucket(b).clear(created_before=[2026]),
])
def test_bad_bucket_arguments_are_named_before_anything_changes(bucket, call):
    with pytest.raises(InputError):
        call(bucket)


def test_clear_created_before_a_datetime(bucket):
    with open_store(str(bucket)) as s:
        assert s.put(*args(1)) == 96
        assert s.clear(created_before=dt.datetime.now() - dt.timedelta(hours=1)).chunks == 0
        assert s.clear(created_before=dt.datetime.now() + dt.timedelta(hours=1)).chunks == 3


# --- eviction edges ------------------------------------------------------------------------------

def test_expired_chunks_make_room_before_any_live_chunk_is_evicted(bucket):
    with open_store(str(bucket), capacity=6 * 16384) as s:
        assert s.put(*args(1), ttl="1h") == 96 and s.put(*args(2)) == 96
        c = sqlite3.connect(bucket / "catalog.sqlite", isolation_level=None)
        c.execute("UPDATE chunks SET expires = ? WHERE expires IS NOT NULL", (time.time() - 1,))
        c.close()
        assert s.put(*args(3)) == 96
        assert check(s, 2) == 96 and check(s, 3) == 96 and check(s, 1) == 0
        counters = s._catalog.counters()["mp/model"]
        assert counters["evicted_chunks:ttl"] == 3 and "evicted_chunks:capacity" not in counters


def test_lifting_a_quota_the_model_never_had_evicts_nothing_past_the_pins(bucket):
    with open_store(str(bucket), capacity=6 * 16384) as s:
        assert s.put(*args(1)) == 96 and s.pin(args(1)[0]) == 3
        s.resize(2 * 16384)  # the pins keep it over capacity
        removed = s.bucket.set_quota("mp/model", None)
        assert removed.chunks == 0 and removed.short_bytes == 0
        assert check(s, 1) == 96


# --- the access history is not a database --------------------------------------------------------

def test_an_access_history_that_is_not_a_database_leaves_every_other_view_working(tmp_path, caplog):
    root = tmp_path / "b"
    kv.Bucket(root, capacity=0).close()
    (root / "accesses.sqlite").write_bytes(os.urandom(8192))
    with kv.Bucket(root) as b:
        assert b.history_totals() is None
        assert b.would_have_served(0.15) is None
        st = b.stats()
        assert st.would_have_served is None and st.chunks == 0
        with pytest.raises(SizingError):
            b.size()
        with pytest.raises(SizingError, match="policy"):
            b.size(policy="fifo")
    assert warned(caplog, "cannot be read")


def test_zero_capacity_strings():
    from pykvstore.bucket.history import parse_capacity

    assert parse_capacity("0GiB") == 0 == parse_capacity(" 0.0 ") == parse_capacity(0)
    with pytest.raises(InputError):
        parse_capacity("0parsecs")


# --- catalog reads refused -----------------------------------------------------------------------

def test_a_lookup_whose_catalog_read_fails_answers_zero(bucket, caplog):
    with open_store(str(bucket)) as s:
        toks = args(1)[0]
        assert s.put(*args(1)) == 96
        refuse_reads(s, "chunks")
        assert s.lookup(toks) == 0
        allow_reads(s)
        assert s.lookup(toks) == 96
    assert warned(caplog, "lookup failed")


def test_a_get_whose_catalog_read_fails_loads_nothing_and_reports_it(bucket, caplog):
    with open_store(str(bucket)) as s:
        toks, cache, ids = args(1)
        assert s.put(toks, cache, ids) == 96
        refuse_reads(s, "chunks")
        dst = kv.PagedKV(make_cache("BHTC", seed=5), "BHTC")
        assert s.get(toks, dst, ids, start=32) == 32  # what the engine already had
        h = s.get_async(toks, dst, ids)
        assert h.wait(30) == 0 and "prohibited" in str(h.errors[0])
        allow_reads(s)
        assert load_verified(s, 1) == 96
    assert warned(caplog, "get failed")


def test_put_async_whose_first_catalog_read_fails_stages_everything_and_stores_it(bucket):
    with open_store(str(bucket)) as s:
        toks, cache, ids = args(1)
        refused = refuse_reads(s, "chunks", times=1)  # only the staging's check of what is held
        h = s.put_async(toks, cache, ids)
        assert refused[0] == 1
        assert h.wait(30) == 96 and h.errors == []
        assert load_verified(s, 1) == 96


def test_a_shadow_store_keeps_its_last_answer_while_the_catalog_cannot_be_read(bucket, monkeypatch):
    from pykvstore.store import shadow

    monkeypatch.setattr(shadow, "CHECK_SECONDS", 0.0)  # ask the catalog at every call
    with open_store(str(bucket), capacity=0) as s:
        toks, cache, ids = args(1)
        refuse_reads(s, "meta")
        assert s.put(toks, cache, ids) == 0 and s.lookup(toks) == 0  # still the 0 GB tier
        allow_reads(s)
        s.bucket.resize("1GiB")
        assert s.put(toks, cache, ids) == 96


# --- the store's input and reporting edges -------------------------------------------------------

def test_a_long_header_moves_the_staged_payload(bucket):
    """A model id and tag of 4-byte characters make the header longer than a page: put_async's
    staged payload (at one page) is moved behind it, and the chunk loads bit-exact."""
    model = "\U0001F600" * 64  # 256 bytes of UTF-8, escaped in the JSON header
    toks, cache, ids = args(1)
    with kv.KVStore(bucket, model=model, chunk_tokens=32) as s:
        h = s.put_async(toks, cache, ids, tag="\U0001F680" * 256)
        assert h.wait(30) == 96
        assert s.root.joinpath(s._catalog.rows()[0].path).stat().st_size > 16384  # header past one page
        dst = make_cache("BHTC", seed=5)
        dst_ids = block_table(12, 24, 7)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), dst_ids) == 96
        _, src, src_ids = sequence(1)
        assert torch.equal(reference(dst, "BHTC", dst_ids, 8, 0, 96), reference(src, "BHTC", src_ids, 8, 0, 96))


def test_store_input_edges(bucket):
    with open_store(str(bucket)) as s:
        toks, cache, ids = args(1)
        with pytest.raises(InputError, match="tag must be a string"):
            s.put(toks, cache, ids, tag=7)
        with pytest.raises(InputError, match="UTF-8"):
            s.put(toks, cache, ids, tag="\ud800")
        assert s.put_async(toks[:31], cache, ids).wait(30) == 0  # no full chunk: nothing staged
        assert s.evict(toks[:31]) == 0
        assert s.stats().chunks == 0
        assert repr(s) == f"KVStore({str(bucket)!r}, model='mp/model', chunk_tokens=32)"
        assert s.put(toks, cache, ids) == 96  # the namespace SGLang's backend keys pages under is the chain's root
        first = [r for r in s._catalog.rows() if r.chunk_index == 0]
        assert [r.parent for r in first] == [s._namespace(cache.geometry).hex]
    s.close()  # a second close is a no-op
    with pytest.raises(InputError, match="closed"):
        s.lookup(toks)


def test_a_failing_observer_never_breaks_a_put_or_get(bucket, caplog):
    with open_store(str(bucket)) as s:
        seen = []

        def broken(*a):
            raise RuntimeError("the metrics backend is down")

        s.observers += [broken, lambda op, *a: seen.append(op)]
        assert s.put(*args(1)) == 96 and load_verified(s, 1) == 96
        assert seen == ["put", "get"]
    assert sum("observer failed" in r.getMessage() for r in caplog.records) == 2  # once per op


def test_a_fault_that_cannot_be_rebuilt_from_its_message_is_kept_as_a_runtime_error():
    err = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    kept = detached(err)
    assert isinstance(kept, RuntimeError) and "UnicodeDecodeError" in str(kept) and kept.__traceback__ is None
    enospc = detached(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert isinstance(enospc, OSError) and enospc.errno == errno.ENOSPC and enospc.filename == "/x"


def test_the_sizing_cache_stays_bounded_however_many_questions_are_asked(bucket):
    """A dashboard may ask for many capacity lists; the bucket keeps at most 17 answers (then
    starts over), and an answer after the reset is the same as before it."""
    with open_store(str(bucket)) as s:
        for seed in range(3):
            assert s.put(*args(seed)) == 96
        s.stats()  # the recorder's waiting records are written
    with kv.Bucket(bucket) as b:
        first = b.size([16384]).to_dict()
        for n in range(2, 19):  # the 18th answer finds 17 kept
            b.size([16384 * n])
            assert len(b._sizing_cache) <= 17
        assert b.size([16384]).to_dict() == first
