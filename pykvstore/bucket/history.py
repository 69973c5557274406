"""The access history as the owner sees it: what a 0 GB bucket would have served, and the size to buy.

Runs on the caller's thread (the CLI, the dashboard, KVStore.stats). Reads
`accesses.sqlite` (recorder.py), which every process with the bucket open
appends to; the figures are recomputed only when the history has grown
(a dashboard polls every few seconds).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .. import recorder, sizing
from ..sizes import parse_size
from .config import DEFAULT_PRICE

log = logging.getLogger("pykvstore")
_ZERO = re.compile(r"^\s*0+(?:\.0*)?\s*([a-zA-Z]*)\s*$")


def parse_capacity(value: Union[int, str]) -> int:
    """parse_size, except that zero ("0", 0, "0GiB") is a capacity too: the 0 GB tier (shadow mode)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if isinstance(value, str):
        m = _ZERO.match(value)
        if m is not None:
            parse_size("1" + m.group(1), "capacity")  # the unit must still be one we know
            return 0
    return parse_size(value, "capacity")


class History:
    """Part of Bucket: sizing from the recorded traffic. Uses the bucket's `root`, `config`, `capacity`, `policy`."""

    root: Path
    _sizing_cache: Optional[dict] = None
    _sizing_lock = threading.Lock()

    def history_totals(self) -> Optional[recorder.Totals]:
        """Exact lifetime counts of what was recorded (every process), or None if nothing ever was
        (or the history cannot be read: the owner's other views still work)."""
        try:
            return recorder.read_totals(self.root)
        except sqlite3.Error as e:
            log.warning("pykvstore: the access history in %s cannot be read: %s", self.root, e)
            return None

    def history(self) -> list[recorder.Access]:
        """The recorded puts still kept (the budget ages the oldest out), in time order."""
        return list(recorder.read_accesses(self.root))

    def _cached(self, key: tuple, compute):
        totals = self.history_totals()
        if totals is None or totals.puts == 0:
            raise sizing.SizingError("no recorded traffic to size from: serve some requests through the bucket first")
        key = (totals.puts, totals.kept_bytes) + key
        with self._sizing_lock:
            cache = self._sizing_cache if self._sizing_cache is not None else {}
            if key not in cache:
                if len(cache) > 16:
                    cache.clear()
                cache[key] = compute()
            self._sizing_cache = cache
            return cache[key]

    def size(self, capacities: Optional[Sequence[Union[int, str]]] = None, *, policy: Optional[str] = None,
             price_per_mtok: Optional[float] = None, storage_price: float = 0.10) -> sizing.SizingReport:
        """Hit rate, $ avoided, $ stored and net saving per capacity, the knee and the current capacity marked.

        capacities: sizes to tabulate (default: points across the working set).
        policy: "lru" (exact stack distances) or "cost" (a replay of the history
        through the cost-aware policy); default: this bucket's policy.
        Raises SizingError when nothing was recorded.
        """
        caps = None if capacities is None else sorted({parse_capacity(c) for c in capacities})
        pol = policy or getattr(self.policy, "name", "lru")
        if pol not in ("lru", "cost"):
            raise sizing.SizingError(f"policy must be 'lru' or 'cost', got {pol!r}")
        price = sizing.check_price(self.config.get("price_per_mtok", DEFAULT_PRICE) if price_per_mtok is None
                                   else price_per_mtok, "price")
        storage = sizing.check_price(storage_price, "storage price")
        current = self.capacity
        return self._cached(("size", tuple(caps) if caps else None, pol, price, storage, current),
                            lambda: sizing.size(self.history(), capacities=caps, policy=pol, price_per_mtok=price,
                                                storage_price=storage, current_capacity=current))

    def would_have_served(self, price_per_mtok: float) -> Optional[dict[str, Any]]:
        """Tokens, hit rate and $ a bucket with room for everything recorded would have served
        (overall, per model, per tag); None when nothing was recorded."""
        try:
            return self._cached(("served", price_per_mtok),
                                lambda: sizing.would_have_served(sizing.lru_profile(self.history()), price_per_mtok))
        except (sizing.SizingError, sqlite3.Error):
            return None
