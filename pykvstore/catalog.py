"""catalog.sqlite: the index of every chunk in a bucket.

An index, not the truth: the chunk files carry everything needed to rebuild
it. WAL mode lets several processes on one host read while one writes; every
change that must be atomic across processes (reserving space, evicting,
committing a write) runs in one BEGIN IMMEDIATE transaction. Triggers keep the
bucket's byte and chunk totals in step with the rows, so capacity checks never
scan the table.

A row is `writing` (0) from the moment its space is reserved until its file is
renamed into place, then `ready` (1). Writing rows count against capacity and
name their owner (host:pid), so rows of a killed writer can be reclaimed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

WRITING, READY = 0, 1
_BATCH = 500  # keys per IN (...) clause

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),
                                   bytes INTEGER NOT NULL, chunks INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS namespaces (digest TEXT PRIMARY KEY, model TEXT NOT NULL, params TEXT NOT NULL);
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
    owner TEXT
);
CREATE INDEX IF NOT EXISTS chunks_parent ON chunks (parent);
CREATE INDEX IF NOT EXISTS chunks_lru ON chunks (last_access);
CREATE INDEX IF NOT EXISTS chunks_state ON chunks (state);
CREATE TRIGGER IF NOT EXISTS chunks_add AFTER INSERT ON chunks BEGIN
    UPDATE totals SET bytes = bytes + NEW.nbytes, chunks = chunks + 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS chunks_del AFTER DELETE ON chunks BEGIN
    UPDATE totals SET bytes = bytes - OLD.nbytes, chunks = chunks - 1 WHERE id = 0;
END;
"""

_COLUMNS = "key, parent, namespace, model, chunk_index, tokens, nbytes, path, created, last_access, tag, hits, state, owner"


@dataclass
class ChunkRow:
    key: str
    parent: str
    namespace: str
    model: str
    chunk_index: int
    tokens: int
    nbytes: int
    path: str  # relative to the bucket root
    created: float
    last_access: float
    tag: Optional[str] = None
    hits: int = 0
    state: int = WRITING
    owner: Optional[str] = None

    def values(self) -> tuple:
        return (self.key, self.parent, self.namespace, self.model, self.chunk_index, self.tokens,
                self.nbytes, self.path, self.created, self.last_access, self.tag, self.hits,
                self.state, self.owner)


def _batches(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


class Catalog:
    """One process's connection to a bucket's catalog (thread-safe)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a killed process loses no commit; a power cut may lose the
            # last few, which leaves files the next rebuild indexes again.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute("SELECT count(*) FROM chunks").fetchone()
        except sqlite3.Error:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: holds the bucket's write lock until commit."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # --- settings and totals -------------------------------------------------
    def get_meta(self, key: str) -> Optional[str]:
        rows = self._query("SELECT v FROM meta WHERE k = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @staticmethod
    def totals(c: sqlite3.Connection) -> tuple[int, int]:
        """(bytes, chunks) held or reserved, read inside a transaction."""
        return c.execute("SELECT bytes, chunks FROM totals WHERE id = 0").fetchone()

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return self.totals(self._conn)

    # --- namespaces ----------------------------------------------------------
    def add_namespace(self, digest: str, model: str, params: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO namespaces VALUES (?, ?, ?)",
                      (digest, model, json.dumps(params, sort_keys=True)))

    def namespaces(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        return [(d, json.loads(p)) for d, p in
                self._query("SELECT digest, params FROM namespaces WHERE model = ?", (model,))]

    # --- chunk rows ----------------------------------------------------------
    def existing(self, keys: Sequence[str]) -> dict[str, int]:
        """key -> state for the keys that have a row."""
        out: dict[str, int] = {}
        for batch in _batches(keys):
            q = f"SELECT key, state FROM chunks WHERE key IN ({','.join('?' * len(batch))})"
            out.update(self._query(q, batch))
        return out

    def ready_prefix_len(self, keys: Sequence[str]) -> int:
        """Length of the longest prefix of `keys` whose chunks are ready (lookup's hot path).

        A batch that is wholly present costs one COUNT; only the batch where
        the prefix ends fetches its keys.
        """
        n = 0
        for batch in _batches(keys):
            marks = ",".join("?" * len(batch))
            (count,) = self._query(f"SELECT count(*) FROM chunks WHERE state = {READY} AND key IN ({marks})", batch)[0]
            if count == len(batch):
                n += count
                continue
            found = {r[0] for r in self._query(f"SELECT key FROM chunks WHERE state = {READY} AND key IN ({marks})", batch)}
            for k in batch:
                if k not in found:
                    return n
                n += 1
        return n

    def ready_prefix(self, keys: Sequence[str]) -> list[ChunkRow]:
        """Rows of the longest prefix of `keys` whose chunks are ready."""
        found: dict[str, ChunkRow] = {}
        for batch in _batches(keys):
            q = f"SELECT {_COLUMNS} FROM chunks WHERE state = {READY} AND key IN ({','.join('?' * len(batch))})"
            for r in self._query(q, batch):
                found[r[0]] = ChunkRow(*r)
            if any(k not in found for k in batch):
                break  # the prefix ends in this batch
        prefix = []
        for k in keys:
            row = found.get(k)
            if row is None:
                break
            prefix.append(row)
        return prefix

    @staticmethod
    def insert(c: sqlite3.Connection, row: ChunkRow) -> bool:
        """Inserts a row inside a transaction; False when the key already has one."""
        cur = c.execute(f"INSERT OR IGNORE INTO chunks ({_COLUMNS}) VALUES ({','.join('?' * 14)})", row.values())
        return cur.rowcount == 1

    def insert_many(self, rows: Iterable[ChunkRow]) -> int:
        with self.transaction() as c:
            return sum(self.insert(c, r) for r in rows)

    def mark_ready(self, key: str, now: float) -> bool:
        """Commits a written chunk; False when its row was removed while in flight."""
        with self.transaction() as c:
            cur = c.execute(
                f"UPDATE chunks SET state = {READY}, owner = NULL, created = ?, last_access = ? "
                f"WHERE key = ? AND state = {WRITING}", (now, now, key))
            return cur.rowcount == 1

    def abort(self, key: str) -> None:
        with self.transaction() as c:
            c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING}", (key,))

    def touch(self, keys: Sequence[str], now: float) -> None:
        """Records a hit on each chunk (LRU position and hit count)."""
        if not keys:
            return
        with self.transaction() as c:
            for batch in _batches(keys):
                c.execute(f"UPDATE chunks SET last_access = ?, hits = hits + 1 "
                          f"WHERE key IN ({','.join('?' * len(batch))})", (now, *batch))

    @staticmethod
    def subtree(c: sqlite3.Connection, keys: Sequence[str]) -> list[ChunkRow]:
        """The rows of `keys` and of every chunk chained after them."""
        out: list[ChunkRow] = []
        for batch in _batches(keys):
            q = (f"WITH RECURSIVE sub(key) AS (SELECT key FROM chunks WHERE key IN ({','.join('?' * len(batch))}) "
                 f"UNION SELECT c.key FROM chunks c JOIN sub ON c.parent = sub.key) "
                 f"SELECT {_COLUMNS} FROM chunks WHERE key IN sub")
            out.extend(ChunkRow(*r) for r in c.execute(q, tuple(batch)))
        return out

    @staticmethod
    def delete(c: sqlite3.Connection, keys: Sequence[str]) -> None:
        for batch in _batches(keys):
            c.execute(f"DELETE FROM chunks WHERE key IN ({','.join('?' * len(batch))})", tuple(batch))

    @staticmethod
    def leaves(c: sqlite3.Connection, limit: int) -> list[ChunkRow]:
        """Ready chunks with no chunk chained after them, least recently used first.

        Only leaves may go: evicting a prefix would strand its tail. A chunk
        whose successor is still being written is not a leaf.
        """
        q = (f"SELECT {_COLUMNS} FROM chunks p WHERE state = {READY} "
             f"AND NOT EXISTS (SELECT 1 FROM chunks s WHERE s.parent = p.key) "
             f"ORDER BY last_access, chunk_index DESC LIMIT ?")
        return [ChunkRow(*r) for r in c.execute(q, (limit,))]

    def writing_rows(self) -> list[ChunkRow]:
        return [ChunkRow(*r) for r in self._query(f"SELECT {_COLUMNS} FROM chunks WHERE state = {WRITING}")]

    def by_model(self) -> dict[str, dict[str, int]]:
        rows = self._query(f"SELECT model, count(*), sum(nbytes), sum(tokens) FROM chunks "
                           f"WHERE state = {READY} GROUP BY model")
        return {m: {"chunks": n, "bytes": b, "tokens": t} for m, n, b, t in rows}
