"""This store's counters (StoreStats), and the model's counters kept in the bucket.

Any thread adds to them (the caller's, the put thread, the get thread);
one lock keeps the in-process figures whole. The bucket's counters (hits,
misses, bytes, LRU order) are advisory: failing to record them is a
warning, never a failed call.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..bucket import Bucket, BucketStats
from ..transfer import copy_counts
from .faults import Faults


@dataclass
class StoreStats:
    """Counters of this store object, and the bucket as every process sees it."""

    puts: int = 0
    put_chunks_written: int = 0
    put_chunks_present: int = 0
    put_bytes_written: int = 0
    put_truncated: int = 0  # puts that stored less than all their full chunks
    put_errors: int = 0
    gets: int = 0
    get_tokens_loaded: int = 0
    host_hits: int = 0  # chunks served from host memory
    disk_hits: int = 0  # chunks read from disk
    get_bytes_read: int = 0
    corrupt_chunks: int = 0
    lookups: int = 0
    capacity_bytes: int = 0
    used_bytes: int = 0
    chunks: int = 0
    host_bytes: int = 0
    host_chunks: int = 0
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    io: dict[str, int] = field(default_factory=dict)
    # chunks moved between engine blocks and host memory in this process, per copy
    # path (native, dma, kernels, torch, torch_host): which one really ran
    copies: dict[str, int] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)  # the host pool: capacity, free bytes, pinned, ...
    remote: dict[str, int] = field(default_factory=dict)  # the Redis tier's counters, if configured
    bucket: Optional[BucketStats] = None  # the bucket as every process sees it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Counters:
    """Adds to this store's StoreStats and to the model's counters in the bucket."""

    def __init__(self, bucket: Bucket, model: str, faults: Faults) -> None:
        self._bucket, self._model, self._faults = bucket, model, faults
        self._stats = StoreStats()
        self._lock = threading.Lock()

    def add(self, **deltas: int) -> None:
        """Adds to this store's counters (puts=1, disk_hits=1, ...)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def snapshot(self) -> StoreStats:
        """A copy of this store's counters, without the bucket's view."""
        with self._lock:
            return StoreStats(**{k: v for k, v in self._stats.to_dict().items() if k != "bucket"})

    def report(self, bucket: BucketStats, host: Any, engine: Any, pool: Any, remote: Any) -> StoreStats:
        """This store's counters with the bucket's view and the tiers' figures beside them."""
        s = self.snapshot()
        s.bucket = bucket
        s.used_bytes, s.chunks, s.capacity_bytes, s.by_model = (bucket.used_bytes, bucket.chunks,
                                                                bucket.capacity_bytes, bucket.by_model)
        s.host_bytes, s.host_chunks = host.used, len(host)
        s.io = dict(engine.counters())
        s.copies = copy_counts()
        s.pool = dict(pool.stats())
        if remote is not None:
            s.remote = remote.stats.to_dict()
        return s

    def record(self, values: dict[str, int], touch: Optional[list[str]] = None) -> None:
        """Adds to this model's counters in the bucket (and records hits on `touch`), best effort."""
        try:
            self._bucket.record(self._model, values, touch)
        except sqlite3.Error as e:  # counters and LRU order are advisory; the call itself succeeded
            self._faults.warn_once("count", f"could not record counters: {e}")
