"""Capacity and eviction: making room inside a catalog transaction, and removing chunks with their files.

Runs on whichever thread holds the transaction: the caller's (clear, resize,
gc, a synchronous put), the store's put thread (put_async, remote landing)
or its get thread (a damaged chunk). Rows go inside the transaction, their
files out of data/ with them (set aside in tmp/), unlinked once it commits and
put back if it rolls back, so a transaction that fails leaves every file in
place and a writer killed after the commit leaves no chunk file without a
row; each removal is counted by cause and told to the listeners (the host
tiers that keep copies).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..catalog import Catalog, ChunkRow
from ..policy import EvictionPolicy
from ..tiers.disk import DiskTier
from ..tiers.safe_paths import UnsafePath

log = logging.getLogger("pykvstore")

CAUSES = ("capacity", "quota", "ttl", "manual", "corrupt")


@dataclass
class Removed:
    """What a clear, gc, resize or eviction removed."""

    chunks: int = 0
    bytes: int = 0
    tokens: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    pinned_bytes: int = 0  # set when a limit could not be met: the pinned bytes in its way
    short_bytes: int = 0  # and how far over that limit the bucket (or model) stays

    def add(self, rows: Iterable[ChunkRow]) -> "Removed":
        for r in rows:
            self.chunks += 1
            self.bytes += r.nbytes
            self.tokens += r.tokens
            m = self.by_model.setdefault(r.model, {"chunks": 0, "bytes": 0, "tokens": 0})
            m["chunks"] += 1
            m["bytes"] += r.nbytes
            m["tokens"] += r.tokens
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _identity(path: str) -> Optional[tuple[int, int]]:
    """(device, inode) of the entry at `path` itself (a link is not followed), None if there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Eviction:
    """Part of Bucket: room for new chunks, and the one way chunks leave with their files.

    Uses the bucket's `disk`, `policy` and `listeners`.
    """

    catalog: Catalog
    disk: DiskTier
    policy: EvictionPolicy
    listeners: list[Callable[[str], None]]

    def remove_rows(self, c: sqlite3.Connection, rows: Sequence[ChunkRow], cause: str, now: float) -> Removed:
        """Deletes rows and their files inside the caller's transaction and counts them by cause."""
        Catalog.delete(c, [r.key for r in rows])
        return self._account(c, rows, cause, now)

    def _account(self, c: sqlite3.Connection, rows: Sequence[ChunkRow], cause: str, now: float) -> Removed:
        """Counts the eviction of rows already deleted; their files go, and the listeners are told,
        once the transaction commits. Unlinked inside it, a transaction that failed later (the
        reservation's insert, or its COMMIT on a full disk) rolled the rows back over files gone."""
        self._unlink_after_commit(rows)
        removed = Removed().add(rows)
        for model, m in removed.by_model.items():
            Catalog.count(c, model, {f"evicted_chunks:{cause}": m["chunks"], f"evicted_bytes:{cause}": m["bytes"]}, now)
        return removed

    def _unlink_after_commit(self, rows: Sequence[ChunkRow]) -> None:
        """Moves `rows`' files out of data/ now, under the write lock, as this writer's temp
        files (disk.set_aside); unlinks them once the transaction commits, puts them back if it
        rolls back, and tells the listeners after the commit. A writer killed after the commit
        leaves a dead writer's temp files, which the next open removes: left in data/, they
        were chunk files no row named, and fsck --repair indexed them again (cleared chunks
        came back). A file that cannot be moved (an unsafe path) is unlinked after the commit
        only if the same file is still there: one written at that path after the commit (the
        key reserved and written again by another writer) is not the one to unlink."""
        keys = [r.key for r in rows]
        aside: list[tuple[str, str]] = []  # (chunk path, temp name)
        in_place: list[tuple[str, tuple[int, int]]] = []  # (chunk path, identity)
        for r in rows:
            try:
                rel = self.disk.path_of(r)
            except UnsafePath:  # a namespace that is no digest (a crafted row) names no file of its own
                continue
            try:
                name = self.disk.set_aside(rel)
            except OSError:
                mark = _identity(self.disk.abspath(rel))
                if mark is not None:
                    in_place.append((rel, mark))
                continue
            if name is not None:
                aside.append((rel, name))

        def unlink() -> None:
            for _, name in aside:
                self.disk.drop_aside(name)
            for rel, mark in in_place:
                if _identity(self.disk.abspath(rel)) == mark:
                    self.disk.remove(rel)
            for key in keys:
                for tell in self.listeners:
                    tell(key)

        def put_back() -> None:
            for rel, name in reversed(aside):
                self.disk.drop_aside(name, rel)

        self.catalog.after_commit(unlink)
        self.catalog.after_rollback(put_back)

    def make_room(self, c: sqlite3.Connection, nbytes: int, protect: Collection[str],
                  model: Optional[str] = None) -> Optional[Removed]:
        """Frees room for `nbytes` more (of `model`, against its quota too) inside the caller's transaction.

        Expired chunks go first, then the policy's choice. None if it cannot
        be done (pinned or in-flight chunks fill the bucket); the caller then
        rolls back, and nothing is removed.
        """
        now = time.time()
        capacity = int(c.execute("SELECT v FROM meta WHERE k = 'capacity'").fetchone()[0])
        limits: list[tuple[Optional[str], int, str]] = [(None, capacity, "capacity")]
        if model is not None:
            q = c.execute("SELECT v FROM meta WHERE k = ?", (f"quota:{model}",)).fetchone()
            if q is not None:
                limits.append((model, int(q[0]), "quota"))
        # Rows are deleted as victims are chosen, files only once every limit is
        # met: a caller that rolls back on None finds its files untouched.
        taken: list[tuple[list[ChunkRow], str]] = []
        for scope, limit, cause in limits:
            if nbytes > limit:
                return None
            if Catalog.totals(c, scope)[0] + nbytes <= limit:
                continue
            if not taken:
                taken.append((self._take_expired(c, now), "ttl"))
            need = Catalog.totals(c, scope)[0] + nbytes - limit
            if need <= 0:
                continue
            victims = self.policy.choose(c, need, protect, scope)  # deletes the rows it chose
            if not victims:
                return None
            taken.append((victims, cause))
        removed = Removed()
        for rows, cause in taken:
            self._account(c, rows, cause, now)
            removed.add(rows)
        return removed

    def shrink(self, model: Optional[str] = None) -> Removed:
        """Evicts until the capacity (and `model`'s quota) hold, rows and files together.

        When pinned or in-flight chunks keep a limit from being met, every chunk
        that may go goes (expired first, then the policy's leaves), the rest stays
        indexed with its file, and the result (and a warning) says how many bytes
        are pinned and how far over the limit the bucket stays. Caller's thread.
        """
        class _Short(Exception):
            pass

        try:
            with self.catalog.transaction() as c:
                removed = self.make_room(c, 0, (), model)
                if removed is None:
                    raise _Short  # make_room may have deleted rows before giving up: roll them back
                return removed
        except _Short:
            pass
        now = time.time()
        with self.catalog.transaction() as c:
            expired = self._take_expired(c, now)
            victims: list[ChunkRow] = []
            while self._over(c, model) > 0:
                chosen = self.policy.choose(c, 1, (), model)  # one leaf (its row deleted), or [] when none may go
                if not chosen:
                    break
                victims += chosen
            removed = self._account(c, expired, "ttl", now)
            self._account(c, victims, "quota" if model is not None else "capacity", now)
            removed.add(victims)
            removed.short_bytes = max(0, self._over(c, model))
            where = "pinned = 1" + (" AND model = ?" if model is not None else "")
            removed.pinned_bytes = int(c.execute(f"SELECT COALESCE(SUM(nbytes), 0) FROM chunks WHERE {where}",
                                                 (model,) if model is not None else ()).fetchone()[0])
        if removed.short_bytes:
            log.warning("%s %s: evicted %d chunks (%d bytes); %d bytes are pinned (or being written) and keep it "
                        "%d bytes over its %s; unpin, or clear with include_pinned, to go lower",
                        "model" if model else "bucket", model or self.root, removed.chunks, removed.bytes,
                        removed.pinned_bytes, removed.short_bytes, "quota" if model else "capacity")
        return removed

    @staticmethod
    def _over(c: sqlite3.Connection, model: Optional[str]) -> int:
        """Bytes over the capacity (or over `model`'s quota, if it has one), in the caller's transaction."""
        if model is None:
            limit = int(c.execute("SELECT v FROM meta WHERE k = 'capacity'").fetchone()[0])
        else:
            q = c.execute("SELECT v FROM meta WHERE k = ?", (f"quota:{model}",)).fetchone()
            if q is None:
                return 0
            limit = int(q[0])
        return Catalog.totals(c, model)[0] - limit

    def _take_expired(self, c: sqlite3.Connection, now: float) -> list[ChunkRow]:
        """Deletes the rows of expired chunks and the tails they strand; the caller accounts for them."""
        expired = Catalog.expired(c, now)
        if not expired:
            return []
        rows = Catalog.subtree(c, [r.key for r in expired])
        Catalog.delete(c, [r.key for r in rows])
        return rows
