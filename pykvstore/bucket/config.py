"""bucket.json: a bucket's settings (capacity, quotas, default TTL, price), kept beside its chunks.

Runs on the caller's thread. Each write replaces the file atomically under
the bucket's `.lock` file, so processes changing settings at once never
leave a torn file; a damaged file is replaced by a new one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from ..keys import FORMAT_VERSION
from ..sizes import parse_size

log = logging.getLogger("pykvstore")

DEFAULT_CAPACITY = "10GiB"  # for a new bucket opened without capacity=
DEFAULT_PRICE = 0.15  # dollars per million input tokens, for cost figures
TTL_MODES = ("absolute", "sliding")
_UNSET: Any = object()  # an argument not given (None means "no TTL")


def check_ttl_mode(ttl_mode: Optional[str]) -> None:
    if ttl_mode is not None and ttl_mode not in TTL_MODES:
        raise InputError(f"ttl_mode must be one of {TTL_MODES}, got {ttl_mode!r}")


class BucketConfig:
    """The bucket.json of one bucket directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "bucket.json"

    def load(self) -> Optional[dict[str, Any]]:
        """The settings, or None when there is no file or it is damaged."""
        try:
            with open(self.path) as f:
                config = json.load(f)
            int(config["capacity"])
            return config
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("bucket.json in %s is damaged; writing a new one", self.root)
            return None

    def save(self, config: dict[str, Any]) -> None:
        """Writes the settings atomically (the caller holds the lock)."""
        tmp = self.root / f"bucket.json.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def update(self, **changes: Any) -> dict[str, Any]:
        """Changes some settings under the lock; returns them all."""
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            config = self.load() or {}
            config.update(changes)
            self.save(config)
            return config

    def settle(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings a bucket opens with: the file's (a new bucket's defaults if
        none), overridden by those the opener gave; written back if they changed.
        The caller holds the lock."""
        config = self.load()
        fresh_config = config is None
        if config is None:
            config = {"format": FORMAT_VERSION, "created": time.time(), "capacity": parse_size(DEFAULT_CAPACITY),
                      "default_ttl": None, "ttl_mode": "absolute", "price_per_mtok": DEFAULT_PRICE, "quotas": {}}
        changed = fresh_config
        for k, v in settings.items():
            if v is not None and v is not _UNSET and config.get(k) != v:
                config[k], changed = v, True
        if settings["default_ttl"] is None and config.get("default_ttl") is not None:
            config["default_ttl"], changed = None, True  # ttl=None given: chunks live forever
        if changed:
            self.save(config)
        return config
