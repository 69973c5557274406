"""The engine's side of a bucket: KVStore and the pipelines behind it (needs torch).

`KVStore`, `Handle` and `StoreStats` are the public names; the modules
beside this one each do one job of the store (see kvstore.py).
"""

from .counters import StoreStats
from .faults import Handle
from .kvstore import KVStore

__all__ = ["Handle", "KVStore", "StoreStats"]
