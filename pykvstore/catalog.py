"""catalog.sqlite: the index of every chunk in a bucket, and its counters.

An index, not the truth: the chunk files carry everything needed to rebuild
the chunk rows. WAL mode lets several processes on one host read while one
writes; every change that must be atomic across processes (reserving space,
evicting, committing a write, counting a hit) runs in one BEGIN IMMEDIATE
transaction. Triggers keep the byte and chunk totals (bucket-wide and per
model) in step with the rows, so capacity and quota checks never scan.

A row is `writing` (0) from the moment its space is reserved until its file is
renamed into place, then `ready` (1). Writing rows count against capacity and
name their owner (host:pid), so rows of a killed writer can be reclaimed.
A row whose `expires` has passed is never served, whether or not anything has
reclaimed it yet.

Counters (hits, misses, bytes, evictions by cause) live in `counters`, per
model, as lifetime totals (period 0) and 5-minute buckets for recent rates.

ChunkRow, the row states and the statements on chunk rows that run inside a
caller's transaction (insert, hits, expiry, pins, what eviction and clear
read and delete) are in catalog_rows; Catalog inherits the statements, and
every name stays importable from here. This module holds the connection:
the schema, transactions, settings, namespaces, lookups and counters.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from .catalog_rows import (  # the row and its statements, importable from here as before
    _BATCH, _COLUMNS, ALIVE, READY, WRITING, ChunkRow, RowStatements, _batches, _marks)

PERIOD = 300  # seconds per counter bucket
# lookup's and get's prefix queries: a 128K-token prompt's 512 keys in one
# statement where SQLite takes 32,766 parameters (3.32+), not two
_PREFIX_BATCH = 4096 if sqlite3.sqlite_version_info >= (3, 32, 0) else _BATCH
# "state = READY" for queries that name their keys: the unary + keeps SQLite off
# the state index, which it would otherwise pick and walk every ready chunk of
# the bucket (lookup grew with the bucket: 25 ms for 500 keys among 50,000).
_READY_BY_KEY = f"+state = {READY}"
# lookup's prefix length in one statement: the keys travel as one JSON array
# that json_each walks, each probing the key index (an IN list of 512 bound
# parameters is first sorted into a temporary index: 0.30 ms against 0.16 for
# a 128K-token prompt here). The first position without a ready, alive row is
# the prefix length (NULL: every key is held), whatever order the rows come in.
_PREFIX_LEN_SQL = ("SELECT min(CASE WHEN c.key IS NULL THEN j.key END) FROM json_each(?1) AS j "
                   f"LEFT JOIN chunks AS c ON c.key = j.value AND +c.state = {READY} "
                   "AND (c.expires IS NULL OR c.expires > ?2)")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),
                                   bytes INTEGER NOT NULL, chunks INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS model_totals (model TEXT PRIMARY KEY, bytes INTEGER NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (digest TEXT PRIMARY KEY, model TEXT NOT NULL, params TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (model TEXT NOT NULL, name TEXT NOT NULL, period INTEGER NOT NULL,
                                     value INTEGER NOT NULL, PRIMARY KEY (model, name, period));
CREATE TABLE IF NOT EXISTS chunks (
    key TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    tag TEXT,
    hits INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,
    owner TEXT,
    expires REAL,
    sliding_ttl REAL,
    pinned INTEGER NOT NULL DEFAULT 0,
    credit REAL NOT NULL DEFAULT 0  -- the eviction clock when last used (cost-aware policy)
);
CREATE INDEX IF NOT EXISTS chunks_parent ON chunks (parent);
CREATE INDEX IF NOT EXISTS chunks_lru ON chunks (last_access);
CREATE INDEX IF NOT EXISTS chunks_state ON chunks (state);
CREATE INDEX IF NOT EXISTS chunks_expires ON chunks (expires);
CREATE INDEX IF NOT EXISTS chunks_model_tag ON chunks (model, tag);
INSERT OR IGNORE INTO meta VALUES ('clock', '0');
CREATE TRIGGER IF NOT EXISTS chunks_add AFTER INSERT ON chunks BEGIN
    UPDATE chunks SET credit = (SELECT CAST(v AS REAL) FROM meta WHERE k = 'clock') WHERE key = NEW.key;
    UPDATE totals SET bytes = bytes + NEW.nbytes, chunks = chunks + 1 WHERE id = 0;
    INSERT INTO model_totals VALUES (NEW.model, NEW.nbytes, 1)
        ON CONFLICT (model) DO UPDATE SET bytes = bytes + excluded.bytes, chunks = chunks + 1;
END;
CREATE TRIGGER IF NOT EXISTS chunks_del AFTER DELETE ON chunks BEGIN
    UPDATE totals SET bytes = bytes - OLD.nbytes, chunks = chunks - 1 WHERE id = 0;
    UPDATE model_totals SET bytes = bytes - OLD.nbytes, chunks = chunks - 1 WHERE model = OLD.model;
END;
"""

class Catalog(RowStatements):
    """One process's connection to a bucket's catalog (thread-safe)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._after: list[Callable[[], None]] = []  # what the open transaction does once committed
        self._undo: list[Callable[[], None]] = []  # ... and once rolled back
        self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a killed process loses no commit; a power cut may lose the
            # last few, which leaves files the next fsck or rebuild indexes again.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute("SELECT count(*) FROM chunks").fetchone()
        except sqlite3.Error:
            self._conn.close()
            raise
        try:  # JSON is built into SQLite 3.38+ unless left out; older builds usually have it
            self._json = self._conn.execute("SELECT count(*) FROM json_each('[]')").fetchone() == (0,)
        except sqlite3.Error:
            self._json = False  # ready_prefix_len takes the IN lists

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: holds the bucket's write lock until commit.

        A failure inside, or of the COMMIT itself (a full disk), rolls back
        (unless SQLite already did: a second error would hide the first), drops
        what `after_commit` queued and runs what `after_rollback` did, last
        first; after a commit, what `after_commit` queued runs in order.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._after, self._undo = [], []
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                undo, self._after, self._undo = self._undo, [], []
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                for fn in reversed(undo):
                    fn()
                raise
            after, self._after, self._undo = self._after, [], []
            for fn in after:
                fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Runs `fn` once the open transaction commits, never if it rolls back (inside transaction() only):
        what must not happen unless the rows' change holds, such as unlinking the files of deleted rows."""
        self._after.append(fn)

    def after_rollback(self, fn: Callable[[], None]) -> None:
        """Runs `fn` if the open transaction rolls back (inside transaction() only): what undoes a
        change made beside the rows, such as putting back the files of rows it deleted."""
        self._undo.append(fn)

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def rows(self, where: str = "1", args: Iterable[Any] = (), order: str = "") -> list[ChunkRow]:
        sql = f"SELECT {_COLUMNS} FROM chunks WHERE {where}" + (f" ORDER BY {order}" if order else "")
        return [ChunkRow(*r) for r in self.query(sql, args)]

    # --- settings and totals -------------------------------------------------
    def get_meta(self, key: str) -> Optional[str]:
        rows = self.query("SELECT v FROM meta WHERE k = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: Optional[str]) -> None:
        with self.transaction() as c:
            if value is None:
                c.execute("DELETE FROM meta WHERE k = ?", (key,))
            else:
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @staticmethod
    def totals(c: sqlite3.Connection, model: Optional[str] = None) -> tuple[int, int]:
        """(bytes, chunks) held or reserved, bucket-wide or for one model."""
        if model is None:
            return c.execute("SELECT bytes, chunks FROM totals WHERE id = 0").fetchone()
        row = c.execute("SELECT bytes, chunks FROM model_totals WHERE model = ?", (model,)).fetchone()
        return row or (0, 0)

    def usage(self, model: Optional[str] = None) -> tuple[int, int]:
        with self._lock:
            return self.totals(self._conn, model)

    # --- namespaces ----------------------------------------------------------
    def add_namespace(self, digest: str, model: str, params: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO namespaces VALUES (?, ?, ?)",
                      (digest, model, json.dumps(params, sort_keys=True)))

    def namespaces(self, model: Optional[str] = None) -> list[tuple[str, dict[str, Any]]]:
        where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
        return [(d, json.loads(p)) for d, p in self.query(f"SELECT digest, params FROM namespaces {where}", args)]

    # --- chunk rows ----------------------------------------------------------
    def existing(self, keys: Sequence[str], now: float) -> dict[str, int]:
        """key -> state for keys with a row that has not expired."""
        out: dict[str, int] = {}
        for batch in _batches(keys):
            q = f"SELECT key, state FROM chunks WHERE {ALIVE} AND key IN ({_marks(len(batch))})"
            out.update(self.query(q, (now, *batch)))
        return out

    def ready_prefix_len(self, keys: Sequence[str], now: float) -> int:
        """Length of the longest prefix of `keys` whose chunks are ready and alive (lookup's hot path).

        One statement over the keys as a JSON array; chunk keys are hex, which
        goes into the array as it is. Keys that cannot go in as they are take
        ready_prefix_len_in, which binds each key as it is: encoded instead,
        a NUL (\\u0000) ended json_each's value there, so 'a\\0b' read as a held
        'a'. A control character (NUL included) as it is makes SQLite refuse
        the array; those keys take the IN lists too. As without SQLite's JSON
        functions. (The checks are memchr-fast: a scan of every character,
        such as isprintable, cost 50 us of 160.)
        """
        if not keys:
            return 0
        flat = "".join(keys)
        if not self._json or not flat.isascii() or '"' in flat or "\\" in flat:
            return self.ready_prefix_len_in(keys, now)
        try:
            (first_missing,) = self.query(_PREFIX_LEN_SQL, ('["' + '","'.join(keys) + '"]', now))[0]
        except sqlite3.OperationalError:  # "malformed JSON": a control character in a key, never misread
            return self.ready_prefix_len_in(keys, now)
        return len(keys) if first_missing is None else first_missing

    def ready_prefix_len_in(self, keys: Sequence[str], now: float) -> int:
        """ready_prefix_len with IN lists of bound keys: a batch that is wholly present costs one
        COUNT; only the batch where the prefix ends fetches its keys."""
        n = 0
        for batch in _batches(keys, _PREFIX_BATCH):
            cond = f"{_READY_BY_KEY} AND {ALIVE} AND key IN ({_marks(len(batch))})"
            (count,) = self.query(f"SELECT count(*) FROM chunks WHERE {cond}", (now, *batch))[0]
            if count == len(batch):
                n += count
                continue
            found = {r[0] for r in self.query(f"SELECT key FROM chunks WHERE {cond}", (now, *batch))}
            for k in batch:
                if k not in found:
                    return n
                n += 1
        return n

    def ready_prefix(self, keys: Sequence[str], now: float) -> list[ChunkRow]:
        """Rows of the longest prefix of `keys` whose chunks are ready and alive."""
        found: dict[str, ChunkRow] = {}
        for batch in _batches(keys, _PREFIX_BATCH):
            for r in self.rows(f"{_READY_BY_KEY} AND {ALIVE} AND key IN ({_marks(len(batch))})", (now, *batch)):
                found[r.key] = r
            if any(k not in found for k in batch):
                break  # the prefix ends in this batch
        prefix = []
        for k in keys:
            row = found.get(k)
            if row is None:
                break
            prefix.append(row)
        return prefix

    def insert_many(self, rows: Iterable[ChunkRow]) -> int:
        with self.transaction() as c:
            return sum(self.insert(c, r) for r in rows)

    def mark_ready(self, key: str, now: float, owner: Optional[str] = None) -> bool:
        """Commits a written chunk; False when its row was removed while in flight. With `owner`,
        only that writer's reservation: once its row was removed (an evict, or its lease judged
        dead), another writer may have reserved the key, and that row is not this writer's to commit."""
        with self.transaction() as c:
            if owner is None:
                cur = c.execute(f"UPDATE chunks SET state = {READY}, owner = NULL, created = ?, last_access = ? "
                                f"WHERE key = ? AND state = {WRITING}", (now, now, key))
            else:
                cur = c.execute(f"UPDATE chunks SET state = {READY}, owner = NULL, created = ?, last_access = ? "
                                f"WHERE key = ? AND state = {WRITING} AND owner = ?", (now, now, key, owner))
            return cur.rowcount == 1

    def abort(self, key: str, owner: Optional[str] = None) -> None:
        """Deletes the `writing` row of `key` (with `owner`, only if that writer reserved it)."""
        with self.transaction() as c:
            if owner is None:
                c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING}", (key,))
            else:
                c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING} AND owner = ?", (key, owner))

    def writing_rows(self) -> list[ChunkRow]:
        return self.rows(f"state = {WRITING}")

    # --- counters ------------------------------------------------------------
    @staticmethod
    def count(c: sqlite3.Connection, model: str, values: dict[str, int], now: float) -> None:
        """Adds to a model's counters, lifetime and in the current 5-minute bucket."""
        period = int(now // PERIOD) * PERIOD
        for name, v in values.items():
            if v:
                for p in (0, period):
                    c.execute("INSERT INTO counters VALUES (?, ?, ?, ?) ON CONFLICT (model, name, period) "
                              "DO UPDATE SET value = value + excluded.value", (model, name, p, int(v)))

    def counters(self, since: Optional[float] = None) -> dict[str, dict[str, int]]:
        """model -> name -> value, lifetime (since None) or over the buckets since a time."""
        if since is None:
            rows = self.query("SELECT model, name, value FROM counters WHERE period = 0")
        else:
            rows = self.query("SELECT model, name, sum(value) FROM counters WHERE period > 0 AND period >= ? "
                              "GROUP BY model, name", (int(since // PERIOD) * PERIOD,))
        out: dict[str, dict[str, int]] = {}
        for model, name, value in rows:
            out.setdefault(model, {})[name] = value
        return out

    def prune_counters(self, older_than: float) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM counters WHERE period > 0 AND period < ?", (older_than,))

