"""Bucket: the owner's side of a bucket — capacity, quotas, TTL defaults,
eviction, clearing, pins, stats and consistency checks.

Needs no model and no tensors: the CLI, a dashboard, or a cron job open a
Bucket; a KVStore opens one underneath. Every change runs in a catalog
transaction, so it holds at once for every process with the bucket open.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import _C, defaults
from .catalog import ALIVE, READY, WRITING, Catalog, ChunkRow
from .chunk_file import decode_header, payload_checksum_ok
from .errors import ChunkError, InputError
from .keys import FORMAT_VERSION
from .policy import EvictionPolicy, make_policy
from .sizes import parse_duration, parse_size
from .tiers.disk import HOST, DiskTier

log = logging.getLogger("pykvstore")

DEFAULT_CAPACITY = "10GiB"  # for a new bucket opened without capacity=
DEFAULT_PRICE = 0.15  # dollars per million input tokens, for cost figures
TTL_MODES = ("absolute", "sliding")
CAUSES = ("capacity", "quota", "ttl", "manual", "corrupt")
_UNSET: Any = object()


class BucketNotFound(InputError):
    """A path that holds no bucket, where one was expected."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


@dataclass
class Removed:
    """What a clear, gc, resize or eviction removed."""

    chunks: int = 0
    bytes: int = 0
    tokens: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_metadata(m: dict[str, str], rel: str, size: int) -> tuple[ChunkRow, dict[str, Any]]:
    """A ready catalog row (and namespace params) from a chunk's header metadata; ChunkError if incomplete."""
    try:
        created = float(m["created"])
        ttl = float(m["ttl"]) if m.get("ttl") else None
        return ChunkRow(
            key=m["key"], parent=m["parent"], namespace=m["namespace"], model=m["model"],
            chunk_index=int(m["index"]), tokens=int(m["tokens"]), nbytes=size, path=rel,
            created=created, last_access=created, tag=m.get("tag") or None, state=READY,
            expires=created + ttl if ttl else None,
            sliding_ttl=ttl if ttl and m.get("ttl_mode") == "sliding" else None), json.loads(m["params"])
    except (KeyError, ValueError, TypeError) as e:
        raise ChunkError(f"header metadata is incomplete: {e!r}") from None


def _rate(hit: int, miss: int) -> Optional[float]:
    return hit / (hit + miss) if hit + miss else None


class Bucket:
    """A bucket directory opened for its owner.

    Args:
        path: the bucket directory.
        capacity: bytes or "50GiB"; given, it becomes the bucket's capacity.
        ttl: default time to live of new chunks (seconds or "24h"); None: forever.
        ttl_mode: "absolute" (expire at a fixed time) or "sliding" (each hit extends).
        price_per_mtok: dollars per million input tokens, for cost figures.
        policy: "lru" (default), "cost", or an EvictionPolicy.
        create: False raises BucketNotFound instead of creating a bucket.
    """

    def __init__(self, path: Union[str, os.PathLike], *, capacity: Union[int, str, None] = None,
                 ttl: Any = _UNSET, ttl_mode: Optional[str] = None, price_per_mtok: Optional[float] = None,
                 policy: Union[str, EvictionPolicy, None] = None, create: bool = True) -> None:
        self.root = Path(path)
        cap = None if capacity is None else parse_size(capacity, "capacity")
        ttl_s = _UNSET if ttl is _UNSET else (None if ttl is None else parse_duration(ttl, "ttl"))
        if ttl_mode is not None and ttl_mode not in TTL_MODES:
            raise InputError(f"ttl_mode must be one of {TTL_MODES}, got {ttl_mode!r}")
        if price_per_mtok is not None and (not isinstance(price_per_mtok, (int, float)) or price_per_mtok < 0):
            raise InputError(f"price_per_mtok must be a non-negative number, got {price_per_mtok!r}")
        self.policy = make_policy(policy)
        if not create and not (self.root / "bucket.json").exists():
            raise BucketNotFound(f"{self.root} is not a pykvstore bucket (no bucket.json)")
        self.listeners: list[Callable[[str], None]] = []  # told each removed key (host tiers)
        self.engine = _C.FileEngine(defaults.get("io_threads"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.disk = DiskTier(self.root, self.engine, defaults.direct_mode("direct_write"),
                             defaults.direct_mode("direct_read"), defaults.get("fsync"))
        settings = {"capacity": cap, "default_ttl": ttl_s, "ttl_mode": ttl_mode, "price_per_mtok": price_per_mtok}
        self.catalog = self._open(settings)

    # --- opening -------------------------------------------------------------
    def _open(self, settings: dict[str, Any]) -> Catalog:
        """Config, catalog (rebuilt if missing or damaged), recovery of dead writers.

        Runs under an exclusive lock file so two processes opening at once do
        not both rebuild; normal operation takes no file lock.
        """
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            config = self._load_config()
            fresh_config = config is None
            if config is None:
                config = {"format": FORMAT_VERSION, "created": time.time(), "capacity": parse_size(DEFAULT_CAPACITY),
                          "default_ttl": None, "ttl_mode": "absolute", "price_per_mtok": DEFAULT_PRICE, "quotas": {}}
            changed = fresh_config
            for k, v in settings.items():
                if v is not None and v is not _UNSET and config.get(k) != v:
                    config[k], changed = v, True
            if settings["default_ttl"] is None and config.get("default_ttl") is not None:
                config["default_ttl"], changed = None, True  # ttl=None given: chunks live forever
            if changed:
                self._save_config(config)
            catalog = self._open_catalog()
            catalog.set_meta("capacity", str(int(config["capacity"])))
            for model, quota in config.get("quotas", {}).items():
                catalog.set_meta(f"quota:{model}", str(int(quota)))
            self.catalog = catalog
            self._recover()
            with catalog.transaction() as c:  # a bucket opened smaller than it holds shrinks now
                self.make_room(c, 0, ())
            return catalog

    def _load_config(self) -> Optional[dict[str, Any]]:
        try:
            with open(self.root / "bucket.json") as f:
                config = json.load(f)
            int(config["capacity"])
            return config
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("bucket.json in %s is damaged; writing a new one", self.root)
            return None

    def _save_config(self, config: dict[str, Any]) -> None:
        tmp = self.root / f"bucket.json.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "bucket.json")

    def _update_config(self, **changes: Any) -> dict[str, Any]:
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            config = self._load_config() or {}
            config.update(changes)
            self._save_config(config)
            return config

    @property
    def config(self) -> dict[str, Any]:
        return self._load_config() or {}

    def _open_catalog(self) -> Catalog:
        path = self.root / "catalog.sqlite"
        fresh = not path.exists()
        if fresh:  # stale WAL/SHM of a deleted catalog must not be replayed into a new one
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            catalog = Catalog(str(path))
        except sqlite3.DatabaseError as e:
            log.warning("catalog %s is damaged (%s); rebuilding it from the chunk files", path, e)
            stamp = int(time.time() * 1000)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(path) + suffix)
                if p.exists():
                    os.replace(p, self.root / "quarantine" / f"{stamp}.catalog.sqlite{suffix}")
            catalog = Catalog(str(path))
            fresh = True
        if fresh:
            self._rebuild(catalog)
        return catalog

    def row_from_file(self, rel: str) -> tuple[ChunkRow, dict[str, Any]]:
        """A ready catalog row (and namespace params) from a chunk file's header; ChunkError if unsound."""
        try:
            head, size = self.disk.read_head(rel)
            m = decode_header(head, size).metadata
        except OSError as e:
            raise ChunkError(str(e)) from None
        if Path(rel).stem != m.get("key"):
            raise ChunkError("file name does not match its key")
        return row_from_metadata(m, rel, size)

    def _rebuild(self, catalog: Catalog) -> None:
        """Indexes every chunk file from its header; damaged files go to quarantine."""
        rows: list[ChunkRow] = []
        for rel in self.disk.chunk_files():
            try:
                row, params = self.row_from_file(rel)
            except ChunkError as e:
                log.warning("rebuild: %s is not a valid chunk (%s); moved aside", rel, e)
                self.disk.quarantine(rel)
                continue
            rows.append(row)
            catalog.add_namespace(row.namespace, row.model, params)
        n = catalog.insert_many(rows)
        if rows:
            log.info("rebuilt catalog of %s: %d chunks", self.root, n)

    def _recover(self) -> list[ChunkRow]:
        """Reclaims what writers on this host that died mid-write left behind."""
        dead = []
        for row in self.catalog.writing_rows():
            host, _, pid = (row.owner or "").rpartition(":")
            if host == HOST and pid.isdigit() and not pid_alive(int(pid)):
                with self.catalog.transaction() as c:
                    c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING}", (row.key,))
                self.disk.remove(row.path)
                dead.append(row)
        self.disk.clean_tmp(pid_alive)
        return dead

    # --- settings ------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.catalog.get_meta("capacity") or 0)

    def quota(self, model: str) -> Optional[int]:
        v = self.catalog.get_meta(f"quota:{model}")
        return int(v) if v is not None else None

    def resize(self, capacity: Union[int, str]) -> Removed:
        """New capacity for every process at once; shrinking evicts (tails first, unpinned only) to fit."""
        cap = parse_size(capacity, "capacity")
        self._update_config(capacity=cap)
        with self.catalog.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES ('capacity', ?)", (str(cap),))
            removed = self.make_room(c, 0, ()) or Removed()
        used, _ = self.catalog.usage()
        if used > cap:
            log.warning("bucket %s holds %d bytes of pinned or in-flight chunks, more than its new capacity %d",
                        self.root, used, cap)
        return removed

    def set_quota(self, model: str, quota: Union[int, str, None]) -> Removed:
        """Caps one model's bytes inside the bucket (None lifts the cap); evicts that model's chunks to fit."""
        if not isinstance(model, str) or not model:
            raise InputError(f"model must be a non-empty string, got {model!r}")
        q = None if quota is None else parse_size(quota, "quota")
        quotas = dict(self.config.get("quotas", {}))
        if q is None:
            quotas.pop(model, None)
        else:
            quotas[model] = q
        self._update_config(quotas=quotas)
        self.catalog.set_meta(f"quota:{model}", None if q is None else str(q))
        with self.catalog.transaction() as c:
            return self.make_room(c, 0, (), model) or Removed()

    def set_defaults(self, *, ttl: Any = _UNSET, ttl_mode: Optional[str] = None,
                     price_per_mtok: Optional[float] = None) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if ttl is not _UNSET:
            changes["default_ttl"] = None if ttl is None else parse_duration(ttl, "ttl")
        if ttl_mode is not None:
            if ttl_mode not in TTL_MODES:
                raise InputError(f"ttl_mode must be one of {TTL_MODES}, got {ttl_mode!r}")
            changes["ttl_mode"] = ttl_mode
        if price_per_mtok is not None:
            changes["price_per_mtok"] = float(price_per_mtok)
        return self._update_config(**changes)

    # --- removal -------------------------------------------------------------
    def remove_rows(self, c: sqlite3.Connection, rows: Sequence[ChunkRow], cause: str, now: float) -> Removed:
        """Deletes rows and their files inside the caller's transaction and counts them by cause."""
        Catalog.delete(c, [r.key for r in rows])
        return self._account(c, rows, cause, now)

    def _account(self, c: sqlite3.Connection, rows: Sequence[ChunkRow], cause: str, now: float) -> Removed:
        """Unlinks the files of rows already deleted, tells listeners, counts the eviction."""
        for r in rows:
            self.disk.remove(r.path)
            for tell in self.listeners:
                tell(r.key)
        removed = Removed().add(rows)
        for model, m in removed.by_model.items():
            Catalog.count(c, model, {f"evicted_chunks:{cause}": m["chunks"], f"evicted_bytes:{cause}": m["bytes"]}, now)
        return removed

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

    def _take_expired(self, c: sqlite3.Connection, now: float) -> list[ChunkRow]:
        """Deletes the rows of expired chunks and the tails they strand; the caller accounts for them."""
        expired = Catalog.expired(c, now)
        if not expired:
            return []
        rows = Catalog.subtree(c, [r.key for r in expired])
        Catalog.delete(c, [r.key for r in rows])
        return rows

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

    def pin(self, keys: Sequence[str], pinned: bool = True, ttl: Any = "keep") -> int:
        """Pins (or unpins) chunks by key. ttl: "keep" leaves expiry alone, None removes it, or a new TTL."""
        now = time.time()
        with self.catalog.transaction() as c:
            n = Catalog.set_pinned(c, keys, pinned)
            if ttl != "keep":
                secs = None if ttl is None else parse_duration(ttl, "ttl")
                Catalog.set_expiry(c, keys, None if secs is None else now + secs, secs)
        return n

    def models(self) -> list[str]:
        return [m for (m,) in self.catalog.query("SELECT model FROM model_totals WHERE chunks > 0 ORDER BY model")]

    # --- views ---------------------------------------------------------------
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
        return BucketStats(
            path=str(self.root.resolve()), capacity_bytes=capacity, used_bytes=used, free_bytes=max(0, capacity - used),
            chunks=chunks, tokens=sum(m["tokens"] for m in by_model.values()),
            pinned_chunks=pinned[0], pinned_bytes=pinned[1],
            default_ttl=config.get("default_ttl"), ttl_mode=config.get("ttl_mode", "absolute"),
            policy=self.policy.name, price_per_mtok=price, tokens_avoided=avoided, cost_avoided=avoided * price / 1e6,
            bytes_written=sum(c.get("bytes_written", 0) for c in life.values()),
            bytes_read=sum(c.get("bytes_read", 0) for c in life.values()),
            evictions=evictions, by_model=by_model, by_namespace=by_ns, by_tag=by_tag, stale_after=stale_s,
            stale=[t for t in by_tag if t["idle_s"] > stale_s])

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

    def fsck(self, repair: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
        """Checks every chunk file against the catalog and its checksum; repair fixes what it finds.

        Repair: missing or damaged chunks leave the catalog (damaged files to
        quarantine, with the tails they strand), files the catalog lacks are
        indexed from their headers, leftovers of dead writers are removed.
        """
        now = time.time()
        rows = self.catalog.rows(f"state = {READY}")
        files = set(self.disk.chunk_files())
        report: dict[str, Any] = {"checked": 0, "ok": 0, "missing": [], "damaged": [], "unindexed": [],
                                  "dead_writers": 0, "repaired": False}
        total = len(rows) + len(files)
        for i, row in enumerate(rows):
            if progress:
                progress(i + 1, total)
            report["checked"] += 1
            if row.path not in files:
                report["missing"].append(row.key)
                continue
            files.discard(row.path)
            try:
                res = self.engine.read(self.disk.abspath(row.path), 0, 1 << 40, True).result()
                hdr = decode_header(res.buffer, len(res.buffer))
                if hdr.metadata.get("key") != row.key or hdr.metadata.get("namespace") != row.namespace:
                    raise ChunkError("holds another chunk")
                if res.payload_hash is None or not payload_checksum_ok(hdr, res.buffer, res.payload_hash):
                    raise ChunkError("checksum mismatch")
                report["ok"] += 1
            except (ChunkError, OSError) as e:
                report["damaged"].append({"key": row.key, "path": row.path, "error": str(e)})
        writing = {r.path for r in self.catalog.writing_rows()}
        unindexed: list[tuple[ChunkRow, dict[str, Any]]] = []
        for j, rel in enumerate(sorted(files - writing)):
            if progress:
                progress(len(rows) + j + 1, total)
            try:
                unindexed.append(self.row_from_file(rel))
                report["unindexed"].append(rel)
            except ChunkError as e:
                report["damaged"].append({"key": Path(rel).stem, "path": rel, "error": str(e)})
        if repair:
            with self.catalog.transaction() as c:
                gone = [d["key"] for d in report["damaged"]] + report["missing"]
                dropped = Catalog.subtree(c, gone)
                self.remove_rows(c, dropped, "corrupt", now)
            for d in report["damaged"]:
                self.disk.quarantine(d["path"])
            for row, params in unindexed:
                self.catalog.add_namespace(row.namespace, row.model, params)
            self.catalog.insert_many(r for r, _ in unindexed)
            report["dead_writers"] = len(self._recover())
            report["repaired"] = True
        report["problems"] = len(report["missing"]) + len(report["damaged"]) + len(report["unindexed"])
        return report

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
