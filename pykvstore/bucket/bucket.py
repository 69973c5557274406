"""Bucket: a bucket directory opened for its owner — opening, settings (capacity, quotas, defaults), closing.

Needs no model and no tensors: the CLI, a dashboard, or a cron job open a
Bucket; a KVStore opens one underneath and reaches the catalog only through
it. Every change runs in a catalog transaction, so it holds at once for
every process with the bucket open. The methods run on the caller's thread,
except those the store calls from its put and get threads (chunks.py,
eviction.py). The rest of the class lives beside this file, one job each:
chunks.py (the store's route to the index), eviction.py (capacity and
eviction), lifecycle.py (TTL, pins, clear, gc), reports.py (stats, ls),
integrity.py (rebuild, recovery, fsck), config.py (bucket.json), history.py
(sizing from the recorded traffic; capacity 0 is the shadow tier).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

from .. import _C, defaults
from ..catalog import Catalog
from ..errors import ConfigError, InputError
from ..policy import EvictionPolicy, make_policy
from ..sizes import parse_duration, parse_size
from ..tiers.disk import DiskTier
from .chunks import ChunkIndex
from .config import _UNSET, BucketConfig, check_ttl_mode
from .eviction import Eviction, Removed
from .history import History, parse_capacity
from .integrity import Integrity
from .lifecycle import Lifecycle
from .reports import Reports

log = logging.getLogger("pykvstore")


class BucketNotFound(InputError):
    """A path that holds no bucket, where one was expected."""


class Bucket(ChunkIndex, Eviction, Lifecycle, Reports, Integrity, History):
    """A bucket directory opened for its owner.

    Args:
        path: the bucket directory.
        capacity: bytes or "50GiB"; given, it becomes the bucket's capacity. 0 is the
            0 GB tier: nothing is stored, every put is recorded for sizing (`size`).
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
        cap = None if capacity is None else parse_capacity(capacity)
        ttl_s = _UNSET if ttl is _UNSET else (None if ttl is None else parse_duration(ttl, "ttl"))
        check_ttl_mode(ttl_mode)
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
        self._config = BucketConfig(self.root)
        self._config_warned = ""
        settings = {"capacity": cap, "default_ttl": ttl_s, "ttl_mode": ttl_mode, "price_per_mtok": price_per_mtok}
        self.catalog = self._open(settings)

    def _open(self, settings: dict[str, Any]) -> Catalog:
        """Config, catalog (rebuilt if missing or damaged), recovery of dead writers.

        Runs under an exclusive lock file so two processes opening at once do
        not both rebuild; normal operation takes no file lock.
        """
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            config = self._config.settle(settings)
            self._good_config = config
            catalog = self._open_catalog()
            catalog.set_meta("capacity", str(int(config["capacity"])))
            for model, quota in config.get("quotas", {}).items():
                catalog.set_meta(f"quota:{model}", str(int(quota)))
            self.catalog = catalog
            self._recover()
            self.shrink()  # a bucket opened smaller than it holds shrinks now
            return catalog

    # --- settings ------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """bucket.json as it is now. While an owner's hand edit leaves it malformed,
        the last good settings, with one warning per problem: a put on the serving
        path never fails on it (opening the bucket, or changing a setting, still
        refuses it with a ConfigError that names the field)."""
        try:
            self._good_config = self._config.load() or {}
        except ConfigError as e:
            if str(e) != self._config_warned:
                self._config_warned = str(e)
                log.warning("%s; keeping the last good settings", e)
        return self._good_config

    @property
    def capacity(self) -> int:
        return int(self.catalog.get_meta("capacity") or 0)

    def quota(self, model: str) -> Optional[int]:
        v = self.catalog.get_meta(f"quota:{model}")
        return int(v) if v is not None else None

    def resize(self, capacity: Union[int, str]) -> Removed:
        """New capacity for every process at once; shrinking evicts (tails first, unpinned only) to fit.

        From 0 (the shadow tier) stores start storing within half a second,
        in every process; to 0 empties the bucket of unpinned chunks.
        """
        cap = parse_capacity(capacity)
        self._config.update(capacity=cap)
        self.catalog.set_meta("capacity", str(cap))
        return self.shrink()  # rows and files together; what pins keep is said, not dropped

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
        self._config.update(quotas=quotas)
        self.catalog.set_meta(f"quota:{model}", None if q is None else str(q))
        return self.shrink(model)

    def set_defaults(self, *, ttl: Any = _UNSET, ttl_mode: Optional[str] = None,
                     price_per_mtok: Optional[float] = None) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if ttl is not _UNSET:
            changes["default_ttl"] = None if ttl is None else parse_duration(ttl, "ttl")
        if ttl_mode is not None:
            check_ttl_mode(ttl_mode)
            changes["ttl_mode"] = ttl_mode
        if price_per_mtok is not None:
            changes["price_per_mtok"] = float(price_per_mtok)
        return self._config.update(**changes)

    def close(self) -> None:
        self.disk.release_lease()  # after the last write: what this process left "writing" is reclaimable
        self.catalog.close()

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
