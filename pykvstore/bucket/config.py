"""bucket.json: a bucket's settings (capacity, quotas, default TTL, price), kept beside its chunks.

Runs on the caller's thread. Each write replaces the file atomically under
the bucket's `.lock` file, so processes changing settings at once never
leave a torn file. The file is input like any other: it is read without
following a link, parsed with bounded nesting, and every known field is
checked; a malformed one is a ConfigError that names the field (it is left for
the owner to fix, never silently replaced). Writes go through a fresh,
unguessable temp name opened O_EXCL|O_NOFOLLOW, so a planted link is never
followed and a leftover never reused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Optional

from .. import strict_json
from ..errors import ConfigError, InputError
from ..keys import FORMAT_VERSION
from ..sizes import MAX_DURATION, MAX_SIZE, parse_size

log = logging.getLogger("pykvstore")

DEFAULT_CAPACITY = "10GiB"  # for a new bucket opened without capacity=
DEFAULT_PRICE = 0.15  # dollars per million input tokens, for cost figures
TTL_MODES = ("absolute", "sliding")
_UNSET: Any = object()  # an argument not given (None means "no TTL")
_MAX_BYTES = 1 << 20


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_config(path: Path, config: Any) -> dict[str, Any]:
    """The settings if every known field has its type and range; ConfigError naming the first that does not."""
    def fail(what: str) -> ConfigError:
        return ConfigError(f"{path} is not a valid bucket configuration: {what}. Fix it, or delete it to start "
                           f"from the defaults (the chunks and catalog are kept)")

    if not isinstance(config, dict):
        raise fail("it is not a JSON object")
    cap = config.get("capacity")
    if type(cap) is not int or not 0 <= cap <= MAX_SIZE:
        raise fail(f"capacity must be a whole number of bytes from 0 to {MAX_SIZE}, got {cap!r}")
    quotas = config.get("quotas", {})
    if not isinstance(quotas, dict) or not all(
            isinstance(m, str) and type(q) is int and 0 < q <= MAX_SIZE for m, q in quotas.items()):
        raise fail("quotas must map model names to positive byte counts")
    ttl = config.get("default_ttl")
    if ttl is not None and not (_number(ttl) and 0 < ttl <= MAX_DURATION):
        raise fail(f"default_ttl must be null or seconds (0 < ttl <= {MAX_DURATION:.0f}), got {ttl!r}")
    mode = config.get("ttl_mode", "absolute")
    if mode not in TTL_MODES:
        raise fail(f"ttl_mode must be one of {TTL_MODES}, got {mode!r}")
    price = config.get("price_per_mtok", 0)
    if not (_number(price) and price >= 0):
        raise fail(f"price_per_mtok must be a non-negative number, got {price!r}")
    return config


def check_ttl_mode(ttl_mode: Optional[str]) -> None:
    if ttl_mode is not None and ttl_mode not in TTL_MODES:
        raise InputError(f"ttl_mode must be one of {TTL_MODES}, got {ttl_mode!r}")


class BucketConfig:
    """The bucket.json of one bucket directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "bucket.json"

    def load(self) -> Optional[dict[str, Any]]:
        """The settings; None when there is no file; ConfigError when it is malformed."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"{self.path} cannot be opened as a regular file ({e.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{self.path} is not a regular file")
            blob = f.read(_MAX_BYTES + 1)
        try:
            config = strict_json.loads(blob, max_bytes=_MAX_BYTES, max_containers=64, floats=True)
        except strict_json.StrictJSONError as e:
            raise ConfigError(f"{self.path} is not a valid bucket configuration: {e}. Fix it, or delete it to "
                              f"start from the defaults (the chunks and catalog are kept)") from None
        return check_config(self.path, config)

    def save(self, config: dict[str, Any]) -> None:
        """Writes the settings atomically (the caller holds the lock) through a fresh temp file."""
        tmp = self.root / f"bucket.json.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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
