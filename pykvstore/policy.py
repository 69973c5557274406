"""Eviction policies: which chunks leave when a write needs room.

A policy only chooses; the bucket removes rows and files. Every policy keeps
the tail-before-prefix rule by choosing among leaves only (a prefix without
its tail still serves; a tail without its prefix never does), and never
chooses a pinned chunk.
"""

from __future__ import annotations

import numbers
import sqlite3
from collections.abc import Collection
from typing import Optional, Protocol

from .catalog import Catalog, ChunkRow


class EvictionPolicy(Protocol):
    name: str

    def choose(self, c: sqlite3.Connection, need: int, protect: Collection[str],
               model: Optional[str] = None) -> list[ChunkRow]:
        """Rows whose removal frees at least `need` bytes (of `model`'s, if given), or [] if impossible.

        Runs inside the caller's transaction and deletes the rows it chose (so
        their parents become leaves); the caller rolls back when the answer is [].
        """
        ...


class _LeafPolicy:
    """Takes the first leaf in `order`, one at a time, until enough bytes are free.

    One at a time because removing a leaf can expose its parent as a leaf that
    comes before the next candidate (an old chain goes whole before a newer
    chain loses its tail).
    """

    name = "leaf"
    order = "last_access"

    def choose(self, c: sqlite3.Connection, need: int, protect: Collection[str],
               model: Optional[str] = None) -> list[ChunkRow]:
        chosen: list[ChunkRow] = []
        while need > 0:
            row = next((r for r in Catalog.leaves(c, self.order, len(protect) + 1, model) if r.key not in protect), None)
            if row is None:
                return []
            Catalog.delete(c, [row.key])
            chosen.append(row)
            need -= row.nbytes
        return chosen


class LRU(_LeafPolicy):
    """Least recently used leaf first (ties: the later chunk of a chain first)."""

    name = "lru"
    order = "last_access, chunk_index DESC"


class CostAware(_LeafPolicy):
    """Keeps the chunks that save the most recompute per byte, aging out the ones no longer used.

    A chunk's worth is (hits + 1) x its prefill cost / its bytes, and prefill
    cost grows with position: every token of chunk i attends to all tokens
    before it, so recomputing it costs tokens x (1 + position / attention_tokens),
    where attention_tokens is the context at which attention work equals the
    rest of the layer (about 4 x hidden size for a dense model; 8192 by default).
    Worth alone would keep a once-popular chunk forever, so priority is
    clock + worth, GreedyDual-style: the clock rises to the priority of each
    chunk evicted, and a chunk's credit is the clock when it was last used.
    """

    name = "cost"

    def __init__(self, attention_tokens: int = 8192) -> None:
        if isinstance(attention_tokens, bool) or not isinstance(attention_tokens, numbers.Real) or \
                not 0 < attention_tokens < float("inf"):  # NaN too: it would make every priority NaN
            from .errors import InputError

            raise InputError(f"attention_tokens must be a positive number of tokens, got {attention_tokens!r}")
        self.attention_tokens = float(attention_tokens)
        self.order = (f"credit + (hits + 1.0) * tokens * (1.0 + (chunk_index + 0.5) * tokens / {self.attention_tokens}) "
                      f"/ nbytes, last_access, chunk_index DESC")

    def priority(self, r: ChunkRow) -> float:
        return r.credit + (r.hits + 1.0) * r.tokens * (1.0 + (r.chunk_index + 0.5) * r.tokens / self.attention_tokens) / r.nbytes

    def choose(self, c: sqlite3.Connection, need: int, protect: Collection[str],
               model: Optional[str] = None) -> list[ChunkRow]:
        chosen = super().choose(c, need, protect, model)
        if chosen:
            c.execute("UPDATE meta SET v = CAST(max(CAST(v AS REAL), ?) AS TEXT) WHERE k = 'clock'",
                      (max(self.priority(r) for r in chosen),))
        return chosen


POLICIES = {"lru": LRU, "cost": CostAware}


def make_policy(policy: "str | EvictionPolicy | None") -> EvictionPolicy:
    from .errors import InputError

    if policy is None:
        return LRU()
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise InputError(f"unknown eviction policy {policy!r}; choose one of {', '.join(POLICIES)}")
        return POLICIES[policy]()
    return policy
