"""pykvstore: a persistent KV-cache store for LLM serving.

Keep the KV state of long shared prefixes in a bucket you own, and load it
back into any engine process instead of recomputing it.

The names that need torch (KVStore, PagedKV, Geometry, ...) load on first
use, so owner tools (`pykvstore` CLI, `Bucket`) start without it.
"""

from typing import Any

from . import defaults
from ._C import cuda_compiled
from .bucket import Bucket, BucketNotFound, BucketStats, Removed
from .errors import BlockIdsError, InputError, LayoutError, SizeError, TokensError
from .policy import LRU, CostAware
from .sizes import parse_duration, parse_size

__version__ = "0.1.0"

_LAZY = {"Geometry": "layout", "PagedKV": "layout", "Handle": "store", "KVStore": "store", "StoreStats": "store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pykvstore' has no attribute {name!r}")


def cuda_available() -> bool:
    """True when the extension was built with CUDA and a device is visible now."""
    from ._C import cuda_device_count

    return cuda_compiled and cuda_device_count() > 0


__all__ = [
    "BlockIdsError", "Bucket", "BucketNotFound", "BucketStats", "CostAware", "Geometry", "Handle", "InputError",
    "KVStore", "LRU", "LayoutError", "PagedKV", "Removed", "SizeError", "StoreStats", "TokensError",
    "cuda_available", "cuda_compiled", "defaults", "parse_duration", "parse_size", "__version__",
]
