"""The access recorder: every put a bucket sees, kept for sizing (`pykvstore size`).

What is recorded. One row per put: when, which stream (model, tag, namespace,
tokens and bytes per chunk), how many tokens the prompt had, and its chain of
chunk keys, each cut to its first 8 bytes (the keys are already uniform hashes;
64 bits keep the chance of two distinct chunks of one bucket colliding below
1e-7 even at 10^6 distinct chunks, and a collision only blurs one point of a
curve). A chain's parent keys are implicit: chunk i's parent is chunk i-1 of
the same row, so a row carries the whole chain and nothing twice.

Why puts. An engine puts each prompt once, after computing or loading it,
and a store's put refreshes the chunks it already holds; the prefix a bucket of
capacity C would have held just before that put is what it would have served
that prompt. A scheduler may `lookup` one request several times while it waits
for room, so lookups are counted, never replayed.

Where. `<bucket>/accesses.sqlite` (WAL), beside the catalog rather than in it:
a flush never takes the catalog's write lock, which every put, get and
eviction needs, and the history survives a catalog rebuild. Every process on
the bucket appends to the same file, each flush one transaction, so the
counts are exact however many processes record at once.

Which thread. `record` (the caller's thread: the engine's) only appends a tuple
to a list under a lock. A daemon thread per recorder flushes every
`FLUSH_SECONDS`, or sooner once `FLUSH_ROWS` are waiting; `close` flushes what
is left. A process killed outright loses at most its last unflushed second.

Bounded. The file keeps about `budget` bytes of history, each put counted as
`ROW_BYTES` + `KEY_COST` per chunk (measured on the file: 8.9 bytes per chunk
access with 66-chunk prompts, 9.9 with 16, 13.9 with 4; about 9 MB per million
chunk accesses of long prompts); the oldest rows go first, in the flush that
goes over. A flush that fails (disk full, locked too long) drops its batch with one
warning: sizing is advisory, serving is not.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

from .sizes import parse_size

log = logging.getLogger("pykvstore")

FILENAME = "accesses.sqlite"
KEY_BYTES = 8
FLUSH_SECONDS = 0.5
FLUSH_ROWS = 2000
MAX_PENDING = 200_000  # rows waiting in memory before new ones are dropped (a stuck disk)
ROW_BYTES = 40.0  # per put, in the file (measured: see the module docstring)
KEY_COST = 8.4  # per chunk, in the file
DEFAULT_BUDGET = 256 << 20  # about 30 million chunk accesses of long prompts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (id INTEGER PRIMARY KEY, model TEXT NOT NULL, tag TEXT NOT NULL,
    namespace TEXT NOT NULL, chunk_tokens INTEGER NOT NULL, chunk_bytes INTEGER NOT NULL,
    UNIQUE (model, tag, namespace, chunk_tokens, chunk_bytes));
CREATE TABLE IF NOT EXISTS accesses (t REAL NOT NULL, stream INTEGER NOT NULL, tokens INTEGER NOT NULL,
    n INTEGER NOT NULL, keys BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), puts INTEGER NOT NULL,
    chunks INTEGER NOT NULL, tokens INTEGER NOT NULL, kept_bytes REAL NOT NULL, lookups INTEGER NOT NULL,
    first REAL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0, 0, 0, 0, NULL);
"""


@dataclass(frozen=True)
class Stream:
    """What a recorded put belongs to: chunks of one model, tag and namespace."""

    model: str
    tag: str
    namespace: str
    chunk_tokens: int
    chunk_bytes: int  # bytes a bucket spends per chunk (its file: header page + payload)


@dataclass
class Access:
    """One recorded put: a chain of chunk keys (8-byte prefixes), root first."""

    t: float
    stream: Stream
    tokens: int  # the prompt's tokens (its full chunks and any partial last one)
    keys: bytes  # KEY_BYTES per chunk

    @property
    def n(self) -> int:
        return len(self.keys) // KEY_BYTES


def budget_bytes(budget: Union[int, str, None]) -> int:
    if budget is None:
        return DEFAULT_BUDGET
    return parse_size(budget, "record budget")


def pack_keys(keys: Sequence[Union[str, bytes]]) -> bytes:
    """The first 8 bytes of each key (hex strings or raw digests), concatenated."""
    out = bytearray()
    for k in keys:
        out += bytes.fromhex(k[: 2 * KEY_BYTES]) if isinstance(k, str) else bytes(k[:KEY_BYTES])
    return bytes(out)


class Recorder:
    """Appends puts (and lookup counts) to a bucket's access history; see the module docstring.

    Args:
        root: the bucket directory.
        budget: history kept, in bytes of file ("256MiB"); the oldest accesses age out.

    Thread-safe; `record` never blocks on the disk and never raises.
    """

    def __init__(self, root: Union[str, os.PathLike], budget: Union[int, str, None] = None) -> None:
        self.path = os.path.join(os.fspath(root), FILENAME)
        self.budget = budget_bytes(budget)
        self._conn = _connect(self.path)
        self._lock = threading.Lock()  # guards _pending, _lookups
        self._db_lock = threading.Lock()  # one flush at a time on this connection
        self._pending: list[tuple[float, Stream, int, bytes]] = []
        self._lookups = 0
        self._dropped = 0
        self._streams: dict[Stream, int] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pykvstore-recorder", daemon=True)
        self._thread.start()
        _live.add(self)

    # --- the caller's thread --------------------------------------------------
    def record(self, stream: Stream, tokens: int, keys: bytes, t: Optional[float] = None) -> None:
        """Queues one put of `tokens` tokens whose chain is `keys` (pack_keys)."""
        if not keys or self._closed:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped += 1
                return
            self._pending.append((time.time() if t is None else t, stream, int(tokens), keys))
            full = len(self._pending) >= FLUSH_ROWS
        if full:
            self._wake.set()

    def count_lookup(self) -> None:
        with self._lock:
            self._lookups += 1

    # --- the recorder's thread ------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Writes what is waiting in one transaction; returns the puts written."""
        with self._db_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                lookups, self._lookups = self._lookups, 0
            if not batch and not lookups:
                return 0
            try:
                self._write(batch, lookups)
            except sqlite3.Error as e:
                log.warning("pykvstore: dropped %d recorded accesses (%s); sizing will undercount", len(batch), e)
                return 0
            return len(batch)

    def _stream_id(self, c: sqlite3.Connection, s: Stream) -> int:
        sid = self._streams.get(s)
        if sid is None:
            vals = (s.model, s.tag, s.namespace, s.chunk_tokens, s.chunk_bytes)
            c.execute("INSERT OR IGNORE INTO streams (model, tag, namespace, chunk_tokens, chunk_bytes) "
                      "VALUES (?, ?, ?, ?, ?)", vals)
            sid = c.execute("SELECT id FROM streams WHERE model = ? AND tag = ? AND namespace = ? AND "
                            "chunk_tokens = ? AND chunk_bytes = ?", vals).fetchone()[0]
            self._streams[s] = sid
        return sid

    def _write(self, batch: list[tuple[float, Stream, int, bytes]], lookups: int) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            rows = [(t, self._stream_id(c, s), tokens, len(keys) // KEY_BYTES, keys) for t, s, tokens, keys in batch]
            c.executemany("INSERT INTO accesses (t, stream, tokens, n, keys) VALUES (?, ?, ?, ?, ?)", rows)
            chunks = sum(r[3] for r in rows)
            cost = len(rows) * ROW_BYTES + chunks * KEY_COST
            first = min((r[0] for r in rows), default=None)
            c.execute("UPDATE totals SET puts = puts + ?, chunks = chunks + ?, tokens = tokens + ?, "
                      "kept_bytes = kept_bytes + ?, lookups = lookups + ?, "
                      "first = CASE WHEN first IS NULL OR first > ? THEN ? ELSE first END WHERE id = 0",
                      (len(rows), chunks, sum(r[2] for r in rows), cost, lookups, first, first))
            self._age_out(c)
            c.execute("COMMIT")
        except BaseException:
            self._streams.clear()  # ids inserted in the rolled-back transaction are gone
            if c.in_transaction:  # sqlite rolls back by itself on some errors (a full disk: SQLITE_FULL)
                c.execute("ROLLBACK")
            raise

    def _age_out(self, c: sqlite3.Connection) -> None:
        (kept,) = c.execute("SELECT kept_bytes FROM totals WHERE id = 0").fetchone()
        excess = kept - self.budget
        if excess <= 0:
            return
        freed, last = 0, None
        for rowid, n in c.execute("SELECT rowid, n FROM accesses ORDER BY rowid"):
            freed += ROW_BYTES + n * KEY_COST
            last = rowid
            if freed >= excess:
                break
        if last is not None:
            c.execute("DELETE FROM accesses WHERE rowid <= ?", (last,))
            c.execute("UPDATE totals SET kept_bytes = max(0, kept_bytes - ?) WHERE id = 0", (freed,))

    def close(self) -> None:
        """Flushes what is waiting and stops the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        with self._db_lock:
            self._conn.close()
        _live.discard(self)

    @property
    def dropped(self) -> int:
        return self._dropped


def _connect(path: str) -> sqlite3.Connection:
    for p in (path, path + "-wal", path + "-shm"):  # a planted link would have us write elsewhere
        if os.path.islink(p):
            raise sqlite3.OperationalError(f"{p} is a symbolic link; the access history is not opened through one")
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a killed process loses no commit
        conn.executescript(_SCHEMA)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


@dataclass
class Totals:
    """Lifetime counts of a bucket's history (exact), and what is still kept."""

    puts: int
    chunks: int
    tokens: int
    kept_bytes: float  # the budget's measure of what is still kept
    lookups: int
    first: Optional[float]


def read_totals(root: Union[str, os.PathLike]) -> Optional[Totals]:
    """The history's counters, or None when nothing was ever recorded there."""
    path = os.path.join(os.fspath(root), FILENAME)
    if not os.path.exists(path):
        return None
    conn = _connect(path)
    try:
        row = conn.execute("SELECT puts, chunks, tokens, kept_bytes, lookups, first FROM totals WHERE id = 0").fetchone()
    finally:
        conn.close()
    return Totals(*row)


def read_accesses(root: Union[str, os.PathLike], since: Optional[float] = None) -> Iterator[Access]:
    """The kept accesses in time order (ties: the order they were written)."""
    path = os.path.join(os.fspath(root), FILENAME)
    if not os.path.exists(path):
        return
    conn = _connect(path)
    try:
        # rows are input (any process, or a hand, may have written the file): a field of the wrong
        # type or out of range skips its row (or stream) instead of crashing `size` or bending its math
        streams = {sid: Stream(m, tag, ns, ct, cb) for sid, m, tag, ns, ct, cb in
                   conn.execute("SELECT id, model, tag, namespace, chunk_tokens, chunk_bytes FROM streams")
                   if all(isinstance(v, str) for v in (m, tag, ns)) and _positive_int(ct) and _positive_int(cb)}
        where, args = ("WHERE t >= ?", (since,)) if since is not None else ("", ())
        for t, sid, tokens, keys in conn.execute(f"SELECT t, stream, tokens, keys FROM accesses {where} "
                                                 f"ORDER BY t, rowid", args):
            s = streams.get(sid)
            if (s is None or not isinstance(keys, bytes) or len(keys) % KEY_BYTES or not isinstance(tokens, int)
                    or tokens < len(keys) // KEY_BYTES * s.chunk_tokens  # a put's chain is of its full chunks
                    or not isinstance(t, (int, float)) or not math.isfinite(t)):
                continue  # a row another writer mangled is skipped, not trusted
            yield Access(float(t), s, tokens, keys)
    finally:
        conn.close()


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and v > 0


def clear(root: Union[str, os.PathLike]) -> None:
    """Forgets the history (the counters too)."""
    path = os.path.join(os.fspath(root), FILENAME)
    if not os.path.exists(path):
        return
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM accesses")
        conn.execute("UPDATE totals SET puts = 0, chunks = 0, tokens = 0, kept_bytes = 0, lookups = 0, first = NULL")
        conn.execute("COMMIT")
    finally:
        conn.close()


_live: "weakref.WeakSet[Recorder]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """A process that exits without closing its stores still writes what it recorded."""
    for r in list(_live):
        try:
            r.close()
        except Exception:  # exiting; nothing to tell
            pass

