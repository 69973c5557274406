"""Eviction policy: which chunks leave when a write needs room.

Policy only chooses; the store removes rows and files. Every policy keeps the
tail-before-prefix rule by choosing among leaves only (a prefix without its
tail still serves; a tail without its prefix never does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Protocol

from .catalog import Catalog, ChunkRow


class EvictionPolicy(Protocol):
    def choose(self, c: sqlite3.Connection, need: int, protect: Collection[str]) -> list[ChunkRow]:
        """Rows whose removal frees at least `need` bytes, or [] if that is impossible.

        Runs inside the caller's transaction and may delete rows it chose to
        look past them; the caller rolls back when the answer is [].
        """
        ...


class LRU:
    """Least recently used leaf first (ties: the later chunk of a chain first)."""

    def choose(self, c: sqlite3.Connection, need: int, protect: Collection[str]) -> list[ChunkRow]:
        chosen: list[ChunkRow] = []
        while need > 0:
            batch = [r for r in Catalog.leaves(c, len(protect) + 64) if r.key not in protect]
            if not batch:
                return []
            taken = []
            for row in batch:
                taken.append(row)
                need -= row.nbytes
                if need <= 0:
                    break
            # Delete them now so the next round sees their parents as leaves.
            Catalog.delete(c, [r.key for r in taken])
            chosen += taken
        return chosen
