"""A chunk row of catalog.sqlite, and the statements on chunk rows that run inside a caller's transaction.

ChunkRow is one row of the `chunks` table (its fields in the table's column
order, see catalog._SCHEMA). RowStatements holds the statements a caller runs
on the connection its `Catalog.transaction()` handed it (`c`): inserting,
recording hits, expiry and pins, and what eviction, TTL and clear read and
delete. They are static methods, called as `Catalog.touch(c, ...)`: the
connection comes in, so they run on the thread holding the transaction (and
the catalog's lock) and change nothing until it commits. Catalog inherits
them; the connection, the lookups and the counters are in catalog.py.

Statements that name keys bind them in batches of _BATCH (`IN (?, ...)`), so
any number of keys stays under SQLite's bound-parameter limit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

WRITING, READY = 0, 1
_BATCH = 500  # keys per IN (...) clause
ALIVE = "(expires IS NULL OR expires > ?)"  # with `now` as its parameter

_COLUMNS = ("key, parent, namespace, model, chunk_index, tokens, nbytes, path, created, last_access, "
            "tag, hits, state, owner, expires, sliding_ttl, pinned, credit")


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
    expires: Optional[float] = None
    sliding_ttl: Optional[float] = None
    pinned: int = 0
    credit: float = 0.0

    def values(self) -> tuple:
        return (self.key, self.parent, self.namespace, self.model, self.chunk_index, self.tokens,
                self.nbytes, self.path, self.created, self.last_access, self.tag, self.hits,
                self.state, self.owner, self.expires, self.sliding_ttl, self.pinned, self.credit)


def _batches(items: Sequence[str], size: int = _BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class RowStatements:
    """Statements on chunk rows, each on the connection `c` of an open transaction."""

    @staticmethod
    def insert(c: sqlite3.Connection, row: ChunkRow) -> bool:
        """Inserts a row inside a transaction; False when the key already has one."""
        cur = c.execute(f"INSERT OR IGNORE INTO chunks ({_COLUMNS}) VALUES ({_marks(18)})", row.values())
        return cur.rowcount == 1

    @staticmethod
    def touch(c: sqlite3.Connection, keys: Sequence[str], now: float) -> None:
        """Records a hit on each chunk: LRU position, hit count, and a sliding TTL's new expiry."""
        for batch in _batches(keys):
            c.execute(f"UPDATE chunks SET last_access = ?, hits = hits + 1, "
                      f"expires = CASE WHEN sliding_ttl IS NULL THEN expires ELSE ? + sliding_ttl END, "
                      f"credit = (SELECT CAST(v AS REAL) FROM meta WHERE k = 'clock') "
                      f"WHERE key IN ({_marks(len(batch))})", (now, now, *batch))

    @staticmethod
    def refresh(c: sqlite3.Connection, keys: Sequence[str], expires: Optional[float], now: float) -> None:
        """A put of chunks already held: they live at least as long as the new put asks."""
        for batch in _batches(keys):
            c.execute(f"UPDATE chunks SET last_access = ?, expires = CASE WHEN ? IS NULL OR expires IS NULL "
                      f"THEN NULL ELSE max(expires, ?) END WHERE key IN ({_marks(len(batch))})",
                      (now, expires, expires, *batch))

    @staticmethod
    def set_expiry(c: sqlite3.Connection, keys: Sequence[str], expires: Optional[float], sliding: Optional[float]) -> int:
        n = 0
        for batch in _batches(keys):
            n += c.execute(f"UPDATE chunks SET expires = ?, sliding_ttl = CASE WHEN sliding_ttl IS NULL THEN NULL "
                           f"ELSE ? END WHERE key IN ({_marks(len(batch))})", (expires, sliding, *batch)).rowcount
        return n

    @staticmethod
    def set_pinned(c: sqlite3.Connection, keys: Sequence[str], pinned: bool) -> int:
        n = 0
        for batch in _batches(keys):
            n += c.execute(f"UPDATE chunks SET pinned = ? WHERE key IN ({_marks(len(batch))})",
                           (int(pinned), *batch)).rowcount
        return n

    @staticmethod
    def subtree(c: sqlite3.Connection, keys: Sequence[str]) -> list[ChunkRow]:
        """The rows of `keys` and of every chunk chained after them."""
        out: dict[str, ChunkRow] = {}
        for batch in _batches(keys):
            q = (f"WITH RECURSIVE sub(key) AS (SELECT key FROM chunks WHERE key IN ({_marks(len(batch))}) "
                 f"UNION SELECT c.key FROM chunks c JOIN sub ON c.parent = sub.key) "
                 f"SELECT {_COLUMNS} FROM chunks WHERE key IN sub")
            out.update((r[0], ChunkRow(*r)) for r in c.execute(q, tuple(batch)))
        return list(out.values())

    @staticmethod
    def delete(c: sqlite3.Connection, keys: Sequence[str]) -> None:
        for batch in _batches(keys):
            c.execute(f"DELETE FROM chunks WHERE key IN ({_marks(len(batch))})", tuple(batch))

    @staticmethod
    def leaves(c: sqlite3.Connection, order: str, limit: int, model: Optional[str] = None) -> list[ChunkRow]:
        """Unpinned ready chunks with no chunk chained after them, in `order`.

        Only leaves may go: evicting a prefix would strand its tail. A chunk
        whose successor is still being written, or is pinned, is not a leaf.
        """
        cond = f"state = {READY} AND pinned = 0 AND NOT EXISTS (SELECT 1 FROM chunks s WHERE s.parent = p.key)"
        args: tuple = ()
        if model is not None:
            cond += " AND model = ?"
            args = (model,)
        q = f"SELECT {_COLUMNS} FROM chunks p WHERE {cond} ORDER BY {order} LIMIT ?"
        return [ChunkRow(*r) for r in c.execute(q, (*args, limit))]

    @staticmethod
    def expired(c: sqlite3.Connection, now: float) -> list[ChunkRow]:
        q = f"SELECT {_COLUMNS} FROM chunks WHERE state = {READY} AND expires IS NOT NULL AND expires <= ?"
        return [ChunkRow(*r) for r in c.execute(q, (now,))]
