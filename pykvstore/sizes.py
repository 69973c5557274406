"""Sizes and durations as users write them: "20GiB", "512 MB", "30m", "7d"."""

from __future__ import annotations

import math
import re

from .errors import SizeError

MAX_SIZE = 1 << 60  # one exbibyte: a larger size is a typo, not a bucket
MAX_DURATION = 100 * 365 * 86400.0  # a century: longer is "forever", say None

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a string with an optional unit (KiB/MiB/GiB/TiB or kB/MB/GB/TB).

    >>> parse_size("2GiB")
    2147483648
    """
    if isinstance(value, bool):
        raise SizeError(f"{what} must be a number of bytes or a string like '20GiB', got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise SizeError(
                f"{what} {value!r} does not parse: use bytes or a number with a unit "
                f"such as '512MiB', '20GiB' or '1TB'"
            )
        if len(m.group(1)) > 30:
            raise SizeError(f"{what} {value[:40]!r}... is too long to be a size")
        n = int(float(m.group(1)) * _UNITS[unit])
    else:
        raise SizeError(f"{what} must be an int or a string like '20GiB', got {type(value).__name__}")
    if n <= 0:
        raise SizeError(f"{what} must be positive, got {value!r}")
    if n > MAX_SIZE:
        raise SizeError(f"{what} {value!r} is larger than the {MAX_SIZE} bytes allowed")
    return n


def format_size(n: int) -> str:
    """A short human-readable size: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: int | float | str, what: str = "duration") -> float:
    """Seconds from a number or a string such as "90s", "30m", "24h", "7d".

    >>> parse_duration("30m")
    1800.0
    """
    if isinstance(value, bool):
        raise SizeError(f"{what} must be seconds or a string like '30m', got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, int) and abs(value) > MAX_DURATION:
            raise SizeError(f"{what} must be at most {MAX_DURATION:.0f} seconds (a century), got a larger integer")
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise SizeError(f"{what} {value!r} does not parse: use seconds or a number with s, m, h, d or w "
                            f"such as '90s', '30m', '24h', '7d'")
        unit = m.group(2).lower() if m.group(2) else None
        if len(m.group(1)) > 30:
            raise SizeError(f"{what} {value[:40]!r}... is too long to be a duration")
        seconds = float(m.group(1)) * _SECONDS[unit]
    else:
        raise SizeError(f"{what} must be seconds or a string like '24h', got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise SizeError(f"{what} must be a finite number of seconds, got {value!r}")
    if seconds <= 0:
        raise SizeError(f"{what} must be positive, got {value!r}")
    if seconds > MAX_DURATION:
        raise SizeError(f"{what} must be at most {MAX_DURATION:.0f} seconds (a century), got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f}{unit}"
    return f"{seconds:.0f}s"
