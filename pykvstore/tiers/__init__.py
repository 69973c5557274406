"""Where chunk bytes live: host memory in front of the disk bucket.

Tiers store and fetch bytes; they never decide what to evict (policy.py does).
"""

from .disk import DiskTier
from .host import HostTier

__all__ = ["DiskTier", "HostTier"]
