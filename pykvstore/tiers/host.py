"""Host-memory tier: recently used chunks kept in this process, LRU by bytes.

It caches chunks whose catalog rows are ready; the store consults the catalog
first, so a chunk another process evicted is never served from here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Optional

import torch


class HostTier:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()
        # key -> (payload tensor, bytes, the buffer that owns the memory)
        self._items: OrderedDict[str, tuple[torch.Tensor, int, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> Optional[torch.Tensor]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, payload: torch.Tensor, owner: Any = None) -> None:
        """Keeps `payload` (its memory owned by `owner`); LRU chunks go when over capacity."""
        nbytes = payload.numel() * payload.element_size()
        if nbytes > self.capacity:
            return
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            while self.used + nbytes > self.capacity and self._items:
                _, (_, n, _) = self._items.popitem(last=False)
                self.used -= n
            self._items[key] = (payload, nbytes, owner)
            self.used += nbytes

    def discard(self, key: str) -> None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self.used -= item[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0
