"""pykvstore: a persistent KV-cache store for LLM serving.

Keep the KV state of long shared prefixes in a bucket you own, and load it
back into any engine process instead of recomputing it.
"""

from . import defaults
from .bucket import Bucket, BucketNotFound, BucketStats, Removed
from ._C import cuda_compiled
from .errors import BlockIdsError, InputError, LayoutError, SizeError, TokensError
from .layout import Geometry, PagedKV
from .policy import LRU, CostAware
from .sizes import parse_duration, parse_size
from .store import Handle, KVStore, StoreStats

__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when the extension was built with CUDA and a device is visible now."""
    from ._C import cuda_device_count

    return cuda_compiled and cuda_device_count() > 0


__all__ = [
    "BlockIdsError", "Bucket", "BucketNotFound", "BucketStats", "CostAware", "Geometry", "Handle", "InputError",
    "KVStore", "LRU", "LayoutError", "PagedKV", "Removed", "SizeError", "StoreStats", "TokensError",
    "cuda_available", "cuda_compiled", "defaults", "parse_duration", "parse_size", "__version__",
]
