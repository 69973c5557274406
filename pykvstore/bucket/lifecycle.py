"""Lifecycle: TTLs, pins, clearing by selector, and garbage collection.

Runs on the caller's thread (the CLI, a dashboard action, a cron job, or a
KVStore's pin/extend/clear). Every change is one catalog transaction, so it
holds at once for every process with the bucket open.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

from ..catalog import READY, Catalog
from ..errors import InputError
from ..sizes import parse_duration
from .eviction import Removed


def _timestamp(value: Union[float, int, str, _dt.datetime], what: str) -> float:
    """Seconds since the epoch from a number, a datetime, or an ISO-8601 string."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise InputError(f"{what} {value!r} is not an ISO-8601 time such as 2026-11-01T12:00") from None
    raise InputError(f"{what} must be a timestamp, datetime or ISO string, got {type(value).__name__}")


class Lifecycle:
    """Part of Bucket: what an owner does to chunks by selector, key or age.

    Uses the bucket's `catalog`, and `_account`/`remove_rows` (eviction),
    `_recover` (integrity) and `models` (reports).
    """

    def gc(self) -> Removed:
        """Reclaims expired chunks (and tails they stranded), dead writers' leftovers, old counter buckets."""
        now = time.time()
        with self.catalog.transaction() as c:
            removed = self._account(c, self._take_expired(c, now), "ttl", now)
        self._recover()
        self.catalog.prune_counters(now - 8 * 86400)
        return removed

    def select(self, *, model: Optional[str] = None, tag: Optional[str] = None, namespace: Optional[str] = None,
               keys: Optional[Sequence[str]] = None, idle_longer_than: Any = None, created_before: Any = None,
               ) -> tuple[str, list[Any]]:
        """A WHERE clause over ready chunks from owner-facing selectors (tag "" means untagged)."""
        where, args = [f"state = {READY}"], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if tag is not None:
            where.append("tag IS NULL" if tag == "" else "tag = ?")
            args += [] if tag == "" else [tag]
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if keys is not None:
            where.append(f"key IN ({','.join('?' * len(keys))})" if keys else "0")
            args += list(keys)
        if idle_longer_than is not None:
            where.append("last_access < ?")
            args.append(time.time() - parse_duration(idle_longer_than, "idle_longer_than"))
        if created_before is not None:
            where.append("created < ?")
            args.append(_timestamp(created_before, "created_before"))
        return " AND ".join(where), args

    def select_keys(self, **selectors: Any) -> list[str]:
        """Keys of the ready chunks the selectors (those of `select`) match."""
        where, args = self.select(**selectors)
        return [k for (k,) in self.catalog.query(f"SELECT key FROM chunks WHERE {where}", args)]

    def clear(self, *, model: Optional[str] = None, tag: Optional[str] = None, namespace: Optional[str] = None,
              keys: Optional[Sequence[str]] = None, idle_longer_than: Any = None, created_before: Any = None,
              include_pinned: bool = False) -> Removed:
        """Removes the chunks the selectors match (all of them with none) and every chunk chained after them.

        A chain that leads to a pinned chunk is kept whole unless include_pinned.
        """
        if model is not None and model not in self.models():
            raise InputError(f"unknown model {model!r}; the bucket holds: {', '.join(self.models()) or 'nothing'}")
        where, args = self.select(model=model, tag=tag, namespace=namespace, keys=keys,
                                  idle_longer_than=idle_longer_than, created_before=created_before)
        now = time.time()
        with self.catalog.transaction() as c:
            matched = [r[0] for r in c.execute(f"SELECT key FROM chunks WHERE {where}", args)]
            rows = {r.key: r for r in Catalog.subtree(c, matched)}
            if not include_pinned:
                keep: set[str] = set()
                for r in [r for r in rows.values() if r.pinned]:
                    k = r.key
                    while k in rows and k not in keep:  # the pinned chunk and its ancestors stay
                        keep.add(k)
                        k = rows[k].parent
                rows = {k: r for k, r in rows.items() if k not in keep}
            return self.remove_rows(c, [r for r in rows.values() if r.state == READY], "manual", now)

    def remove_chains(self, keys: Sequence[str], cause: str) -> Removed:
        """Removes the chunks of `keys` and every chunk chained after them, pinned or not, counted under `cause`."""
        with self.catalog.transaction() as c:
            return self.remove_rows(c, Catalog.subtree(c, keys), cause, time.time())

    def pin(self, keys: Sequence[str], pinned: bool = True, ttl: Any = "keep") -> int:
        """Pins (or unpins) chunks by key. ttl: "keep" leaves expiry alone, None removes it, or a new TTL."""
        now = time.time()
        with self.catalog.transaction() as c:
            n = Catalog.set_pinned(c, keys, pinned)
            if ttl != "keep":
                secs = None if ttl is None else parse_duration(ttl, "ttl")
                Catalog.set_expiry(c, keys, None if secs is None else now + secs, secs)
        return n

    def extend(self, keys: Sequence[str], ttl: Optional[float]) -> int:
        """Sets chunks to expire `ttl` seconds from now (None: never); returns how many changed."""
        with self.catalog.transaction() as c:
            return Catalog.set_expiry(c, keys, None if ttl is None else time.time() + ttl, ttl)
