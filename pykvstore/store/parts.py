"""What the store's pipelines share, and the memory tiers opened for them.

Built once by KVStore on the caller's thread, then only read (from any thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .. import _C, defaults
from ..bucket import Bucket
from ..tiers.disk import DiskTier
from ..tiers.host import HostTier
from .counters import Counters
from .faults import Faults
from .namespaces import Namespaces


@dataclass(frozen=True)
class StoreParts:
    model: str
    chunk_tokens: int
    bucket: Bucket  # the one route to the catalog
    disk: DiskTier
    pool: Any  # _C.HostPool: staging buffers, reads and the host tier share it
    host: HostTier
    remote: Optional[Any]  # RedisTier, when configured
    names: Namespaces
    counters: Counters
    faults: Faults
    io_cpus: Optional[frozenset[int]] = None  # where threads the pipelines start run (affinity.py)
    fault_ahead: bool = True  # prefault on: the model's chunks' pages at open, and ahead of use after (prefault.py)


_POOL_STAGING = 512 << 20  # pool bytes beyond the host tier, for chunks in flight


def open_tiers(bucket: Bucket, host_cap: int, remote: Any,
               remote_options: Optional[dict[str, Any]]) -> tuple[Any, HostTier, Optional[Any]]:
    """(host pool, host tier, remote tier or None) for a store over `bucket`; closes the bucket if one fails."""
    _C.set_buffer_cache_limit(defaults.get("buffer_cache"))
    # Staging buffers, reads and the host tier share one pool: a chunk kept
    # in host memory is already where DMA and O_DIRECT want it.
    pool = _C.HostPool(defaults.get("host_pool") or host_cap + _POOL_STAGING, pin=True, huge_pages=True)
    bucket.engine.set_pool(pool)
    host = HostTier(host_cap)
    bucket.listeners.append(host.discard)
    tier = None
    if remote is not None:
        from ..tiers.redis import RedisTier  # redis-py only when a remote is used

        try:
            tier = RedisTier(remote, **(remote_options or {}))
        except BaseException:
            bucket.close()
            raise
    return pool, host, tier
