"""Error paths of the store under real faults (issue 19): the catalog's write lock held by
another connection, a Redis chunk landing where there is no room or a reservation, a chunk
evicted while it is written, two writers on one key, a bad file where a directory should be.

Each fault is real (a second SQLite connection in a write transaction, a real redis-server,
a second store or process on the bucket, a real file in the way) or injected at the
environment's boundary (the engine's own write-fault switch). A pause hook only times a
fault: it wraps one method of one store object, calls the real method, and changes nothing
the store computes. Every test checks the documented outcome: a miss or the held prefix, no
exception out of put/get/lookup, nothing committed lost, no orphan file, row or reservation.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import pykvstore as kv
from pykvstore.catalog import READY, WRITING
from workers import CT, args, data_files, load_verified, open_store, rows

WORKERS = str(Path(__file__).parent / "workers.py")


def short_wait(store) -> None:
    """The store's connection gives up on a held write lock after 50 ms instead of 60 s
    (the SQLite busy timeout; nothing else about the connection changes)."""
    store._catalog._conn.execute("PRAGMA busy_timeout = 50")


class CatalogLock:
    """Another connection holding the catalog's write lock (BEGIN IMMEDIATE), as a second
    process in a long transaction would: every write transaction of the store fails with
    'database is locked' while reads go on (WAL)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "catalog.sqlite"
        self.conn = None

    def take(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


@contextmanager
def catalog_locked(root: Path):
    lock = CatalogLock(root)
    lock.take()
    try:
        yield lock
    finally:
        lock.release()


def warned(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --- 1. the catalog cannot be written ------------------------------------------------------

def test_a_locked_catalog_during_put_keeps_the_held_prefix(bucket, caplog):
    """Refreshing the held chunks' expiry and reserving the next one both fail: the put
    answers what is held (2 chunks), writes nothing, and heals once the lock is gone."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        assert s.put(toks[:64], cache, ids) == 64
        short_wait(s)
        with catalog_locked(bucket):
            assert s.put(toks, cache, ids) == 64  # not 0: the first two chunks are held
            assert s.put(args(2)[0], *args(2)[1:]) == 0  # a new sequence: nothing reserved, nothing written
            assert s.lookup(toks) == 64  # reads go on under the lock
        st = s.stats()
        assert st.put_errors == 0 and st.put_truncated == 2
        assert len(data_files(bucket)) == 2 and list((bucket / "tmp").iterdir()) == []
        assert set(rows(s).values()) == {READY}
        assert warned(caplog, "cannot reserve space")
        assert s.put(toks, cache, ids) == 96
        assert load_verified(s, 1) == 96


class LockAfterWrite:
    """Pause hook on one store's disk tier: after the n-th chunk write is issued, another
    connection takes the catalog's write lock (the write itself is the real one)."""

    def __init__(self, store, lock: CatalogLock, nth: int = 1) -> None:
        self.real, self.lock, self.nth, self.calls = store._disk.write, lock, nth, 0
        store._disk.write = self

    def __call__(self, rel, buf, size):
        fut = self.real(rel, buf, size)
        self.calls += 1
        if self.calls == self.nth:
            fut.result()  # the file is in place: only the commit is left
            self.lock.take()
        return fut


def test_a_catalog_locked_between_reserve_and_commit_leaves_nothing_and_releases_later(bucket, caplog):
    """The commit and the release of the reservation both fail: the written file is removed,
    the row stays `writing` under this live store, and the next put releases it first and
    stores the whole sequence (before: it counted the stale reservation as held, answering
    96 with nothing loadable)."""
    toks, cache, ids = args(1)
    lock = CatalogLock(bucket)
    with open_store(str(bucket)) as s:
        short_wait(s)
        LockAfterWrite(s, lock)
        try:
            assert s.put(toks, cache, ids) == 0
            assert data_files(bucket) == [] and list((bucket / "tmp").iterdir()) == []
            assert list(rows(s).values()) == [WRITING]  # the catalog could not be written
            assert s._puts._unreleased == set(rows(s))
            assert warned(caplog, "could not release a failed chunk's reservation")
            assert s.stats().put_truncated == 1
        finally:
            lock.release()
        del s._disk.write
        assert s.put(toks, cache, ids) == 96
        assert s.lookup(toks) == 96 and s._catalog.writing_rows() == [] and s._puts._unreleased == set()
        assert len(data_files(bucket)) == 3
        assert load_verified(s, 1) == 96


def test_a_locked_catalog_when_a_damaged_chunk_is_dropped_still_serves_the_sound_prefix(bucket, caplog):
    """get meets a damaged chunk while the catalog is locked: the chunk is a miss (moved
    aside, counted), the sound prefix is served, and dropping its row waits for a later get."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        assert s.put(toks, cache, ids) == 96
        paths = [bucket / r.path for r in s._catalog.ready_prefix(s.hashes(toks), time.time())]
    data = bytearray(paths[1].read_bytes())
    data[-100] ^= 1
    paths[1].write_bytes(bytes(data))
    with open_store(str(bucket)) as s:  # nothing in host memory
        short_wait(s)
        with catalog_locked(bucket):
            assert load_verified(s, 1) == 32
            assert len(rows(s)) == 3  # the rows could not be dropped
        assert warned(caplog, "could not drop a damaged chunk")
        assert s.stats().corrupt_chunks == 1 and not paths[1].exists()
        assert len(list((bucket / "quarantine").iterdir())) == 1
        assert load_verified(s, 1) == 32  # now the vanished chunk and its tail leave the catalog
        assert len(rows(s)) == 1 and not paths[2].exists()
        assert s.lookup(toks) == 32


def test_a_locked_catalog_when_unreachable_chunks_are_dropped_keeps_the_prefix(bucket, one_io_thread, caplog):
    """Chunk 1's write fails (ENOSPC from the engine), chunk 2 is committed, and the catalog
    is locked before the put drops chunk 2 (unreachable): the put still answers chunk 0,
    chunk 2 stays indexed, and the next put fills the hole."""
    toks, cache, ids = args(1)
    lock = CatalogLock(bucket)
    with open_store(str(bucket)) as s:
        short_wait(s)
        real = s.bucket.mark_ready

        def mark_ready(key, now, owner=None):
            ok = real(key, now, owner)
            if key == s.hashes(toks)[2]:
                lock.take()
            return ok

        s.bucket.mark_ready = mark_ready
        s.bucket.engine.inject_faults("write", 2, errno.ENOSPC)  # the 2nd write: chunk 1
        try:
            assert s.put(toks, cache, ids) == 32
        finally:
            lock.release()
            s.bucket.engine.inject_faults("write", 0)
        assert warned(caplog, "could not drop unreachable chunks")
        keys = s.hashes(toks)
        assert rows(s) == {keys[0]: READY, keys[2]: READY} and s._puts._undropped == {keys[2]}
        assert s.lookup(toks) == 32 and len(data_files(bucket)) == 2
        del s.bucket.mark_ready
        s._puts.retry_releases()  # what the next put does first: the drop is made now
        assert rows(s) == {keys[0]: READY} and len(data_files(bucket)) == 1 and s._puts._undropped == set()
        assert s.put(toks, cache, ids) == 96 and load_verified(s, 1) == 96


def test_a_reservation_refused_after_its_eviction_keeps_every_evicted_file(bucket, caplog):
    """A put into a full bucket: make_room deletes the victims' rows, then the reservation's own
    row is refused (SQLite's authorizer on the store's connection denies the INSERT, as a full
    disk or an I/O error would fail it) and the transaction rolls back. The victims' rows come
    back, so their files must still be there (they were unlinked inside the transaction: lookup
    said 96 and get loaded 64)."""
    with open_store(str(bucket), capacity=3 * 16384) as s:
        assert s.put(*args(1)) == 96
        before = [p.read_bytes() for p in data_files(bucket)]

        def no_insert(action, arg1, arg2, db, source):
            return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT and arg1 == "chunks" else sqlite3.SQLITE_OK

        s._catalog._conn.set_authorizer(no_insert)
        try:
            assert s.put(*args(2)) == 0
        finally:
            s._catalog._conn.set_authorizer(None)
        assert warned(caplog, "cannot reserve space")
        assert [p.read_bytes() for p in data_files(bucket)] == before and len(rows(s)) == 3
        assert s.lookup(args(1)[0]) == 96 and load_verified(s, 1) == 96
        assert s.put(*args(2)) == 96  # allowed again: sequence 1 is evicted, rows and files together
        assert s.lookup(args(1)[0]) == 0 and len(data_files(bucket)) == 3 == len(rows(s))


def test_a_transaction_sqlite_rolled_back_itself_reports_its_own_error_and_the_catalog_goes_on(bucket):
    """SQLite interrupts the eviction's DELETE (a progress handler asks it to, as
    sqlite3_interrupt would) and rolls the whole transaction back itself: evict raises that
    error, not a second one from a ROLLBACK with no transaction open; no file is lost, and
    the next transaction on the connection works."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        assert s.put(toks, cache, ids) == 96
        conn = s._catalog._conn
        deleting = []
        conn.set_trace_callback(lambda sql: deleting.append(sql.startswith("DELETE FROM chunks")))
        conn.set_progress_handler(lambda: 1 if deleting and deleting[-1] else 0, 1)
        try:
            with pytest.raises(sqlite3.OperationalError, match="interrupted"):
                s.evict(toks)
        finally:
            conn.set_progress_handler(None, 1)
            conn.set_trace_callback(None)
        assert not conn.in_transaction and len(rows(s)) == 3 and len(data_files(bucket)) == 3
        assert load_verified(s, 1) == 96
        assert s.evict(toks) == 3 * 16384 and data_files(bucket) == []


def test_a_drop_of_unreachable_chunks_sqlite_rolled_back_keeps_their_files(bucket, one_io_thread, caplog):
    """Chunk 1's write fails (ENOSPC from the engine), chunk 2 is committed, and SQLite interrupts
    the COMMIT of the transaction that drops chunk 2 (unreachable): chunk 2 stays indexed, so
    its file must stay too; the next put fills the hole and all 96 tokens load."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        conn = s._catalog._conn
        seen = []

        def trace(sql):
            seen.append(sql)

        def interrupt():  # the COMMIT right after the drop's DELETE
            return 1 if len(seen) > 1 and seen[-1] == "COMMIT" and seen[-2].startswith(
                "DELETE FROM chunks WHERE key IN") else 0

        conn.set_trace_callback(trace)
        conn.set_progress_handler(interrupt, 1)
        s.bucket.engine.inject_faults("write", 2, errno.ENOSPC)  # the 2nd write: chunk 1
        try:
            assert s.put(toks, cache, ids) == 32
        finally:
            s.bucket.engine.inject_faults("write", 0)
            conn.set_progress_handler(None, 1)
            conn.set_trace_callback(None)
        assert warned(caplog, "could not drop unreachable chunks")
        keys = s.hashes(toks)
        assert rows(s) == {keys[0]: READY, keys[2]: READY} and len(data_files(bucket)) == 2
        assert s.put(toks, cache, ids) == 96 and load_verified(s, 1) == 96


# --- 2. and 4. landing from Redis ------------------------------------------------------------

redis_server = pytest.mark.skipif(shutil.which("redis-server") is None,
                                  reason="redis-server is not installed (.ci/run installs it)")


@pytest.fixture
def server(tmp_path):
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from redis_servers import RedisServer

    s = RedisServer(workdir=tmp_path / "redis")
    yield s
    s.close()


def seed_remote(tmp_path: Path, url: str, seed: int) -> list[str]:
    """Sequence `seed` written to Redis by a store on another bucket; its keys."""
    with open_store(str(tmp_path / "writer"), remote=url) as a:
        toks, cache, ids = args(seed)
        assert a.put(toks, cache, ids) == 96
        assert a._remote.flush(30)
        return a.hashes(toks)


def watch_landing(store) -> list:
    """The futures of the store's landings on its put thread (the landing runs there, unchanged)."""
    futs: list = []
    submit = store._landing._submit
    store._landing._submit = lambda fn, *a: futs.append(submit(fn, *a))
    return futs


def test_a_remote_chunk_landing_in_a_bucket_full_of_pins_is_served_and_not_kept(tmp_path, server):
    keys = seed_remote(tmp_path, server.url, 1)
    root = tmp_path / "b"
    with open_store(str(root), capacity=3 * 16384, remote=server.url) as b:
        assert b.put(*args(2)) == 96 and b.pin(args(2)[0]) == 3
        pinned = (rows(b), [p.read_bytes() for p in data_files(root)])
        futs = watch_landing(b)
        assert load_verified(b, 1) == 96  # served from Redis
        assert len(futs) == 1 and futs[0].result() is None  # NoRoom stays inside the landing
        assert (rows(b), [p.read_bytes() for p in data_files(root)]) == pinned
        assert not set(keys) & set(rows(b)) and list((root / "tmp").iterdir()) == []


def test_a_remote_chunk_whose_local_write_fails_leaves_no_reservation(tmp_path, server, caplog):
    seed_remote(tmp_path, server.url, 1)
    root = tmp_path / "b"
    with open_store(str(root), remote=server.url) as b:
        futs = watch_landing(b)
        b.bucket.engine.inject_faults("write", 1, errno.ENOSPC)  # every local write fails
        try:
            assert load_verified(b, 1) == 96
            assert futs[0].result() is None
        finally:
            b.bucket.engine.inject_faults("write", 0)
        assert rows(b) == {} and data_files(root) == [] and list((root / "tmp").iterdir()) == []
        assert warned(caplog, "could not keep a remote chunk locally")
        assert load_verified(b, 1) == 96 and futs[-1].result() is None  # lands now
        assert len(rows(b)) == 3 and set(rows(b).values()) == {READY}


@pytest.fixture
def stopped_writer(tmp_path):
    """A real second process on bucket `b`: it put sequences 0-2, then reserved the first
    chunk of sequence 3 and stopped before writing it (workers.write_then_stop)."""
    root = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, WORKERS, "write_then_stop", str(root), "reserved"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[:3] == ["0\n", "1\n", "2\n"] and lines[3].startswith("stopped "), lines
        state = json.loads(lines[3][len("stopped "):])
        yield root, state["rel"], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_remote_chunk_another_process_is_writing_is_not_overwritten(tmp_path, server, stopped_writer):
    root, rel, proc = stopped_writer
    keys = seed_remote(tmp_path, server.url, 3)
    with open_store(str(root), remote=server.url) as b:
        owner = dict(b._catalog.query("SELECT key, owner FROM chunks WHERE state = 0"))
        assert list(owner) == [keys[0]]
        futs = watch_landing(b)
        assert load_verified(b, 3) == 96  # served from Redis
        assert futs[0].result() is None
        # the other writer's reservation is untouched: still its own, still unwritten
        assert dict(b._catalog.query("SELECT key, owner FROM chunks WHERE state = 0")) == owner
        assert not (root / rel).exists()
        assert rows(b)[keys[1]] == READY and rows(b)[keys[2]] == READY  # the rest landed
        # nothing local counts before the writer's chunk 0 is ready
        assert b.bucket.ready_prefix_len(keys, time.time()) == 0


def test_a_put_never_counts_a_chunk_another_process_is_still_writing(stopped_writer):
    """Sequence 3's first chunk is reserved by a live writer: a put of sequence 3 holds
    nothing yet, writes nothing over it, and answers what lookup answers (0, not 96)."""
    root, rel, proc = stopped_writer
    with open_store(str(root)) as b:
        toks, cache, ids = args(3)
        held = b.put(toks, cache, ids)
        assert held == b.lookup(toks) == 0
        st = b.stats()
        assert st.put_chunks_written == 0 and st.put_chunks_present == 0
        assert not (root / rel).exists() and len(b._catalog.writing_rows()) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_store(str(root)) as b:  # the dead writer's reservation is reclaimed at open
        assert b._catalog.writing_rows() == []
        assert b.put(*args(3)) == 96 and load_verified(b, 3) == 96
        assert len(data_files(root)) == 12


# --- 3. a chunk evicted while it is written ----------------------------------------------------

def test_a_chunk_evicted_by_another_store_while_written_leaves_no_orphan_file(bucket):
    """Another store on the bucket evicts the sequence between the first chunk's reservation
    and its write: the commit finds no row, the file written after is removed, the chunks
    committed after it are unreachable and dropped; the put answers 0."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as other:
        real = a._disk.write
        calls = []

        def write(rel, buf, size):
            if not calls:
                other.evict(toks)  # the reservation goes; the file is written after
            calls.append(rel)
            return real(rel, buf, size)

        a._disk.write = write
        assert a.put(toks, cache, ids) == 0
        assert len(calls) == 3
        assert data_files(bucket) == [] and rows(a) == {} and list((bucket / "tmp").iterdir()) == []
        assert a.lookup(toks) == 0 == other.lookup(toks)
        a._disk.write = real
        assert a.put(toks, cache, ids) == 96 and load_verified(other, 1) == 96


def test_a_chunk_written_again_between_an_eviction_commit_and_its_unlink_is_kept(bucket):
    """Files of evicted rows are unlinked once the eviction commits; another store may reserve
    and write the same keys in between (a pause hook runs its put at that moment): the files it
    wrote are new ones, and the eviction's unlink leaves them (lookup and get agree on 96)."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as b:
        assert a.put(toks, cache, ids) == 96
        real = a.bucket.catalog.after_commit
        late_puts = []

        def after_commit(fn):
            def late():
                late_puts.append(b.put(toks, cache, ids))  # between a's COMMIT and a's unlinks
                fn()
            real(late)

        a.bucket.catalog.after_commit = after_commit
        assert a.evict(toks) == 3 * 16384
        del a.bucket.catalog.after_commit
        assert late_puts == [96]
        assert len(data_files(bucket)) == 3 and set(rows(b).values()) == {READY}
        assert b.lookup(toks) == 96 and load_verified(b, 1) == 96


# --- 4. another writer reserves the same key first ---------------------------------------------

def test_two_stores_racing_on_one_key_write_it_once_and_answer_what_is_held(bucket):
    """Store b checks what is held, then store a reserves b's first chunk before b does:
    b writes nothing over it and answers 0 (what lookup says) while a is still writing;
    a stores the sequence once."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as b:
        a_reserved, a_go = threading.Event(), threading.Event()
        real_write = a._disk.write

        def a_write(rel, buf, size):
            a_reserved.set()
            assert a_go.wait(30)
            return real_write(rel, buf, size)

        a._disk.write = a_write
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("a", a.put(toks, cache, ids)))
        real_reserve = b.bucket.reserve

        def b_reserve(row, protect):
            if not t.is_alive() and "a" not in result:
                t.start()
                assert a_reserved.wait(30)  # a's row for this key is in (writing)
            return real_reserve(row, protect)

        b.bucket.reserve = b_reserve
        try:
            held_b = b.put(toks, cache, ids)
            seen_b = b.lookup(toks)
        finally:
            a_go.set()
            t.join(30)
        assert held_b == seen_b == 0
        assert result["a"] == 96
        assert b.stats().put_chunks_written == 0 and a.stats().put_chunks_written == 3
        assert len(data_files(bucket)) == 3 and a._catalog.writing_rows() == []
        del b.bucket.reserve
        assert b.put(toks, cache, ids) == 96 and b.stats().put_chunks_present == 3
        assert load_verified(b, 1) == 96


def test_a_key_another_store_committed_first_is_held_and_never_written_twice(bucket):
    """Store b checks what is held, then store a stores the whole sequence before b reserves
    its first chunk: b's reservations find a's ready chunks, b writes nothing, answers 96,
    and a's files are the ones kept (same inodes)."""
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as a, open_store(str(bucket)) as b:
        real_reserve = b.bucket.reserve
        done = []

        def b_reserve(row, protect):
            if not done:
                done.append(a.put(toks, cache, ids))  # a gets there first, and finishes
            return real_reserve(row, protect)

        b.bucket.reserve = b_reserve
        inodes = None
        try:
            assert b.put(toks, cache, ids) == 96 == b.lookup(toks)
            inodes = [p.stat().st_ino for p in data_files(bucket)]
        finally:
            del b.bucket.reserve
        assert done == [96] and len(inodes) == 3
        assert b.stats().put_chunks_written == 0 and a.stats().put_chunks_written == 3
        assert [p.stat().st_ino for p in data_files(bucket)] == inodes
        assert load_verified(b, 1) == 96


# --- a bad file where a directory should be; an expired row replaced ---------------------------

def test_a_file_where_the_chunk_directory_should_be_fails_the_put_cleanly(bucket, caplog):
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        (bucket / "data" / "mp--model").write_text("not a directory")
        assert s.put(toks, cache, ids) == 0  # no exception
        st = s.stats()
        assert st.put_errors == 1 and st.put_truncated == 1
        assert rows(s) == {} and list((bucket / "tmp").iterdir()) == []
        assert warned(caplog, "put failed")
        (bucket / "data" / "mp--model").unlink()
        assert s.put(toks, cache, ids) == 96 and load_verified(s, 1) == 96


def test_a_put_over_an_expired_chunk_replaces_it_and_its_tail(bucket):
    toks, cache, ids = args(1)
    with open_store(str(bucket)) as s:
        assert s.put(toks, cache, ids, ttl="1h") == 96
        c = sqlite3.connect(bucket / "catalog.sqlite", isolation_level=None)
        c.execute("UPDATE chunks SET expires = ?", (time.time() - 1,))  # an hour later, as the catalog sees it
        c.close()
        assert s.lookup(toks) == 0
        assert s.put(toks, cache, ids) == 96
        assert s.lookup(toks) == 96 and load_verified(s, 1) == 96
        assert set(rows(s).values()) == {READY}
        assert s._catalog.counters()["mp/model"]["evicted_chunks:ttl"] == 3
        assert s._catalog.query("SELECT count(*) FROM chunks WHERE expires IS NOT NULL")[0][0] == 0


def test_a_local_file_damaged_since_its_load_is_not_republished_to_a_server_that_lost_it(tmp_path, server):
    """The server lost everything (FLUSHALL); local hits come from host memory and ask the tier
    to refill it from the local files. Chunk 1's file was damaged meanwhile: it is not sent
    (the refill reads and verifies the file), chunks 0 and 2 are."""
    import redis

    root = tmp_path / "a"
    with open_store(str(root), remote=server.url) as a:
        toks, cache, ids = args(9)
        assert a.put(toks, cache, ids) == 96
        assert a._remote.flush(30)
        keys = a.hashes(toks)
        path = root / a._disk.relpath("mp/model", a._catalog.namespaces("mp/model")[0][0], keys[1])
        data = bytearray(path.read_bytes())
        data[-100] ^= 1
        path.write_bytes(bytes(data))
        server.cli("flushall")
        assert load_verified(a, 9) == 96  # from host memory: the damage on disk is not read here
        assert a._remote.flush(30)
        assert a.stats().remote["republished"] == 2
        r = redis.Redis.from_url(server.url)
        assert [bool(r.exists(f"pykvstore:{{{k}}}")) for k in keys] == [True, False, True]
