"""What the store's pipelines share: built once by KVStore, then only read (from any thread)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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
