"""The owner's side of a bucket: capacity, quotas, TTL defaults, eviction,
clearing, pins, stats and consistency checks. Needs no torch.

`Bucket` is the one public class; its parts live in the modules beside it.
"""

from .bucket import Bucket, BucketNotFound
from .chunks import NoRoom
from .config import _UNSET, DEFAULT_CAPACITY, DEFAULT_PRICE, TTL_MODES, BucketConfig
from .eviction import CAUSES, Removed
from ..lease import pid_alive
from .integrity import row_from_metadata
from .reports import BucketStats

__all__ = ["Bucket", "BucketConfig", "BucketNotFound", "BucketStats", "CAUSES", "DEFAULT_CAPACITY", "DEFAULT_PRICE",
           "NoRoom", "Removed", "TTL_MODES", "pid_alive", "row_from_metadata"]
