"""The store's route to the index: lookups, reservations, commits, use counters, and drops.

A KVStore reaches the catalog only through these Bucket methods. They run
on the thread of the call that needs them: the caller's (lookup, a
synchronous put or get), the store's put thread (put_async, remote landing)
or its get thread (get_async). Each is one short catalog transaction, so
processes sharing the bucket see a chunk either reserved, ready or absent.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any, Optional

from ..catalog import WRITING, Catalog, ChunkRow
from ..tiers.safe_paths import UnsafePath
from .eviction import _identity

log = logging.getLogger("pykvstore")


class NoRoom(Exception):
    """The bucket cannot make room for the next chunk (pinned or in-flight chunks fill it)."""


class ChunkIndex:
    """Part of Bucket: what a store asks of the catalog. Uses the bucket's `catalog`, `disk`,
    `make_room`, `remove_rows` and `_unlink_after_commit` (eviction), `remove_chains` (lifecycle)."""

    # --- lookups -------------------------------------------------------------
    def namespaces(self, model: Optional[str] = None) -> list[tuple[str, dict[str, Any]]]:
        """(digest hex, params) of the namespaces stored for `model` (every model with None)."""
        return self.catalog.namespaces(model)

    def add_namespace(self, digest: str, model: str, params: dict[str, Any]) -> None:
        self.catalog.add_namespace(digest, model, params)

    def ready_prefix_len(self, keys: Sequence[str], now: float) -> int:
        """How many leading `keys` are ready and unexpired."""
        return self.catalog.ready_prefix_len(keys, now)

    def ready_prefix(self, keys: Sequence[str], now: float) -> list[ChunkRow]:
        """The rows of the leading `keys` that are ready and unexpired, as far as a chunk path
        can be derived for them: a row whose namespace is no hex digest (a crafted or damaged
        catalog, say 'hex\\n') ends the prefix as a damaged chunk ends a load. Its path_of
        raised out of the get, so every get of the prompt loaded 0 ('get failed') while lookup
        said held, until fsck ran. It is dropped with its tail (counted 'corrupt'; it names no
        file of its own), so lookup agrees from then on. One check per namespace."""
        rows = self.catalog.ready_prefix(keys, now)
        named: set[tuple[str, str]] = set()
        for i, row in enumerate(rows):
            if (row.model, row.namespace) in named:
                continue
            try:
                self.disk.path_of(row)
            except UnsafePath as e:
                log.warning("catalog row of chunk %s names no chunk path (%s); dropped with its tail, "
                            "served as a miss", row.key[:16], e)
                try:
                    self.remove_chains([row.key], "corrupt")
                except sqlite3.Error as err:  # still a miss; dropped by the next get or fsck --repair
                    log.warning("could not drop a damaged chunk from the catalog: %s", err)
                return rows[:i]
            named.add((row.model, row.namespace))
        return rows

    def existing(self, keys: Sequence[str], now: float) -> dict[str, int]:
        """Those of `keys` held (ready and unexpired, or being written)."""
        return self.catalog.existing(keys, now)

    # --- a put ---------------------------------------------------------------
    def refresh(self, keys: Sequence[str], expires: Optional[float], now: float) -> None:
        """Chunks a put found held live at least until `expires` (None: forever)."""
        with self.catalog.transaction() as c:
            Catalog.refresh(c, keys, expires, now)

    def reserve(self, row: ChunkRow, protect: Collection[str]) -> Optional[bool]:
        """Space and a `writing` row for a chunk about to be written.

        True: reserved. None: the chunk exists or is being written by someone
        else. Raises NoRoom when the bucket cannot make room (of row.model's
        quota too) without evicting `protect`.
        """
        now = time.time()
        with self.catalog.transaction() as c:
            old = c.execute("SELECT expires, state FROM chunks WHERE key = ?", (row.key,)).fetchone()
            if old is not None:
                if old[0] is None or old[0] > now or old[1] == WRITING:
                    return None
                # expired: replace it (and the tail it would strand)
                self.remove_rows(c, Catalog.subtree(c, [row.key]), "ttl", now)
            if self.make_room(c, row.nbytes, protect, row.model) is None:
                raise NoRoom
            Catalog.insert(c, row)
            return True

    def mark_ready(self, key: str, now: float, owner: Optional[str] = None) -> bool:
        """Commits `owner`'s reservation of a chunk whose file is written; False if it was removed
        meanwhile (and the key perhaps reserved by another writer, whose row it leaves alone)."""
        return self.catalog.mark_ready(key, now, owner)

    def release(self, row: ChunkRow, owner: str) -> None:
        """Undoes `owner`'s reservation of `row` after its write failed or its commit found the
        reservation gone (an evict or clear meanwhile): deletes the `writing` row if it is still
        `owner`'s and, when then no row holds the key, the file at the chunk path, unlinked under
        the write lock: another writer can put a file there only after reserving the key, which
        takes that lock. It may have done so since, committed or about to: deleting whatever sat
        at the path left its ready row with no file (lookup held, get 0). Unlinked inside the
        transaction: a rollback restores only this writer's own reservation, which needs no file.

        When the catalog cannot be written (sqlite3.Error, raised after this), the row stays
        and the caller retries the release; the file goes now if the key is still held by
        `owner` alone or by no row, read without the lock, and the same file (device, inode)
        is still there. Runs on the put's thread."""
        try:
            with self.catalog.transaction() as c:
                c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING} AND owner = ?", (row.key, owner))
                if c.execute("SELECT 1 FROM chunks WHERE key = ?", (row.key,)).fetchone() is None:
                    self.disk.remove(self.disk.path_of(row))
        except sqlite3.Error:
            rel = self.disk.path_of(row)
            mark = _identity(self.disk.abspath(rel))
            holders = self.catalog.query("SELECT state, owner FROM chunks WHERE key = ?", (row.key,))
            if mark is not None and all(h == (WRITING, owner) for h in holders) \
                    and _identity(self.disk.abspath(rel)) == mark:
                self.disk.remove(rel)
            raise

    def abort(self, key: str, owner: Optional[str] = None) -> None:
        """Releases a reservation whose write failed (with `owner`: only that writer's; the
        row may have gone since, and the key been reserved by another writer)."""
        self.catalog.abort(key, owner)

    def unlink_chunks(self, keys: Collection[str], *, tails: bool) -> list[ChunkRow]:
        """Deletes the rows of `keys` (with tails, every chunk chained after them too) and
        their files, counted as no eviction: chunks nothing can reach, or whose files
        vanished (evicted by another process). Returns the rows deleted."""
        with self.catalog.transaction() as c:
            rows = Catalog.subtree(c, list(keys))
            if not tails:
                rows = [r for r in rows if r.key in keys]
            Catalog.delete(c, [r.key for r in rows])
            self._unlink_after_commit(rows)  # eviction.py: the files go once the deletes hold
        return rows

    def unlink_unreachable(self, keys: Collection[str]) -> list[ChunkRow]:
        """Deletes the rows and files of those `keys` whose parent has no alive row (or is one
        of them going), counted as no eviction: a put's chunks written after one that failed.
        Another writer may have filled the gap since (or be writing it): those chunks are
        reachable, and dropping them took chunks its put had answered as held."""
        with self.catalog.transaction() as c:
            rows = [r for r in Catalog.subtree(c, list(keys)) if r.key in keys]
            present = self.catalog.existing(list({r.parent for r in rows}), time.time())
            gone: set[str] = set()
            while True:
                more = {r.key for r in rows if r.key not in gone and (r.parent not in present or r.parent in gone)}
                if not more:
                    break
                gone |= more
            doomed = [r for r in rows if r.key in gone]
            Catalog.delete(c, [r.key for r in doomed])
            self._unlink_after_commit(doomed)
        return doomed

    # --- use -------------------------------------------------------------------
    def record(self, model: str, values: dict[str, int], touch: Optional[Sequence[str]] = None) -> None:
        """Adds to `model`'s counters (puts, hits, bytes, ...) and marks `touch` as just used."""
        now = time.time()
        with self.catalog.transaction() as c:
            if touch:
                Catalog.touch(c, touch, now)
            Catalog.count(c, model, values, now)
