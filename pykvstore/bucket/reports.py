"""Reports: what a bucket holds, what it earned, and what has gone stale.

Runs on the caller's thread (the CLI, the dashboard, Prometheus scrapes,
KVStore.stats). Read-only: every figure comes from the catalog, so each
process sees the same bucket.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..catalog import ALIVE, READY
from ..errors import InputError
from ..sizes import parse_duration
from .config import DEFAULT_PRICE
from .eviction import CAUSES


@dataclass
class BucketStats:
    """What a bucket holds, what it earned, and what has gone stale."""

    path: str
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    chunks: int
    tokens: int
    pinned_chunks: int
    pinned_bytes: int
    default_ttl: Optional[float]
    ttl_mode: str
    policy: str
    price_per_mtok: float
    tokens_avoided: int  # prefill tokens served from the bucket instead of recomputed
    cost_avoided: float  # their worth at price_per_mtok
    bytes_written: int
    bytes_read: int
    evictions: dict[str, dict[str, int]]  # cause -> chunks, bytes
    by_model: dict[str, dict[str, Any]]
    by_namespace: dict[str, dict[str, Any]]
    by_tag: list[dict[str, Any]]
    stale_after: float
    stale: list[dict[str, Any]]  # (model, tag) groups not hit for stale_after
    # the 0 GB tier: what a bucket with room for everything recorded would have served
    # (tokens, prompt_tokens, hit_rate, cost; by_model, by_tag); None unless the capacity is 0
    would_have_served: Optional[dict[str, Any]] = None
    recorded: Optional[dict[str, Any]] = None  # the access history's exact counts (every process)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(hit: int, miss: int) -> Optional[float]:
    return hit / (hit + miss) if hit + miss else None


class Reports:
    """Part of Bucket: the owner's views. Uses the bucket's `catalog`, `config`, `capacity`, `quota`, `policy`."""

    def models(self) -> list[str]:
        return [m for (m,) in self.catalog.query("SELECT model FROM model_totals WHERE chunks > 0 ORDER BY model")]

    def stats(self, price_per_mtok: Optional[float] = None, stale_after: Any = "7d") -> BucketStats:
        now = time.time()
        config = self.config
        price = float(config.get("price_per_mtok", DEFAULT_PRICE) if price_per_mtok is None else price_per_mtok)
        stale_s = parse_duration(stale_after, "stale_after")
        cat = self.catalog
        used, chunks = cat.usage()
        capacity = self.capacity
        life, hour, day = cat.counters(), cat.counters(now - 3600), cat.counters(now - 86400)
        alive = f"state = {READY} AND {ALIVE}"
        by_model: dict[str, dict[str, Any]] = {}
        for model, n, b, t in cat.query(f"SELECT model, count(*), sum(nbytes), sum(tokens) FROM chunks "
                                        f"WHERE {alive} GROUP BY model", (now,)):
            by_model[model] = {"chunks": n, "bytes": b, "tokens": t}
        for model in set(life) | set(by_model):
            m = by_model.setdefault(model, {"chunks": 0, "bytes": 0, "tokens": 0})
            lc = life.get(model, {})
            m.update(quota=self.quota(model), hit_tokens=lc.get("hit_tokens", 0), miss_tokens=lc.get("miss_tokens", 0),
                     hit_rate=_rate(lc.get("hit_tokens", 0), lc.get("miss_tokens", 0)),
                     hit_rate_hour=_rate(hour.get(model, {}).get("hit_tokens", 0), hour.get(model, {}).get("miss_tokens", 0)),
                     hit_rate_day=_rate(day.get(model, {}).get("hit_tokens", 0), day.get(model, {}).get("miss_tokens", 0)),
                     tokens_avoided=lc.get("hit_tokens", 0),
                     cost_avoided=lc.get("hit_tokens", 0) * price / 1e6)
        by_ns = {ns: {"model": m, "chunks": n, "bytes": b, "tokens": t} for ns, m, n, b, t in cat.query(
            f"SELECT namespace, model, count(*), sum(nbytes), sum(tokens) FROM chunks WHERE {alive} "
            f"GROUP BY namespace", (now,))}
        by_tag = [{"model": m, "tag": tag or "", "chunks": n, "bytes": b, "tokens": t, "hits": h,
                   "last_hit": la, "idle_s": now - la, "pinned_chunks": p, "next_expiry": ex}
                  for m, tag, n, b, t, h, la, p, ex in cat.query(
                      f"SELECT model, tag, count(*), sum(nbytes), sum(tokens), sum(hits), max(last_access), "
                      f"sum(pinned), min(expires) FROM chunks WHERE {alive} GROUP BY model, tag "
                      f"ORDER BY model, tag", (now,))]
        evictions = {cause: {"chunks": sum(c.get(f"evicted_chunks:{cause}", 0) for c in life.values()),
                             "bytes": sum(c.get(f"evicted_bytes:{cause}", 0) for c in life.values())}
                     for cause in CAUSES}
        pinned = cat.query(f"SELECT count(*), coalesce(sum(nbytes), 0) FROM chunks WHERE {alive} AND pinned = 1", (now,))[0]
        avoided = sum(c.get("hit_tokens", 0) for c in life.values())
        totals = self.history_totals()
        return BucketStats(
            path=str(self.root.resolve()), capacity_bytes=capacity, used_bytes=used, free_bytes=max(0, capacity - used),
            chunks=chunks, tokens=sum(m["tokens"] for m in by_model.values()),
            pinned_chunks=pinned[0], pinned_bytes=pinned[1],
            default_ttl=config.get("default_ttl"), ttl_mode=config.get("ttl_mode", "absolute"),
            policy=self.policy.name, price_per_mtok=price, tokens_avoided=avoided, cost_avoided=avoided * price / 1e6,
            bytes_written=sum(c.get("bytes_written", 0) for c in life.values()),
            bytes_read=sum(c.get("bytes_read", 0) for c in life.values()),
            evictions=evictions, by_model=by_model, by_namespace=by_ns, by_tag=by_tag, stale_after=stale_s,
            stale=[t for t in by_tag if t["idle_s"] > stale_s],
            would_have_served=self.would_have_served(price) if capacity == 0 else None,
            recorded=None if totals is None else asdict(totals))

    def ls(self, *, model: Optional[str] = None, tag: Optional[str] = None, idle_longer_than: Any = None,
           sort: str = "bytes", chunks: bool = False, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """Entries per (model, tag), or per chunk with chunks=True, sorted by bytes, hits or idle."""
        orders = {"bytes": "bytes DESC", "hits": "hits DESC", "idle": "last_access ASC", "created": "created DESC"}
        if sort not in orders:
            raise InputError(f"sort must be one of {', '.join(orders)}, got {sort!r}")
        where, args = self.select(model=model, tag=tag, idle_longer_than=idle_longer_than)
        now = time.time()
        lim = f" LIMIT {int(limit)}" if limit else ""
        if chunks:
            q = (f"SELECT key, model, coalesce(tag, ''), chunk_index, tokens, nbytes AS bytes, hits, "
                 f"last_access, created, expires, pinned FROM chunks WHERE {where} ORDER BY {orders[sort]}{lim}")
            cols = ["key", "model", "tag", "index", "tokens", "bytes", "hits", "last_access", "created", "expires", "pinned"]
        else:
            q = (f"SELECT model, coalesce(tag, ''), count(*), sum(tokens), sum(nbytes) AS bytes, sum(hits) AS hits, "
                 f"max(last_access) AS last_access, min(created) AS created, min(expires), sum(pinned) "
                 f"FROM chunks WHERE {where} GROUP BY model, tag ORDER BY {orders[sort]}{lim}")
            cols = ["model", "tag", "chunks", "tokens", "bytes", "hits", "last_access", "created", "next_expiry", "pinned"]
        out = [dict(zip(cols, r)) for r in self.catalog.query(q, args)]
        for e in out:
            e["idle_s"] = now - e["last_access"]
        return out
