"""JSON from outside the process (chunk headers, Redis values), parsed without surprises.

`json.loads` recurses once per nesting level (100k `[` raise RecursionError),
turns `1e400` into inf, accepts NaN and Infinity, keeps the last of two equal
keys (another reader may keep the first) and turns a 4,301-digit integer into
a ValueError only by accident of a global limit. Everything the bucket reads
back is input, so it goes through `loads` here: sizes and the number of
containers are bounded *before* the parser runs (the depth can never exceed the
number of containers), and what the parser meets is checked as it goes.

Pure Python, no I/O; any thread may call it.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_MAX_INT_DIGITS = 30


class StrictJSONError(ValueError):
    """Input that is not small, flat, plain JSON."""


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not allowed")


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"floating-point number {text[:20]!r} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise StrictJSONError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise StrictJSONError("an object repeats a key")
    return out


def _finite_float(text: str) -> float:
    x = float(text)
    if x != x or x in (float("inf"), float("-inf")):
        raise StrictJSONError(f"number {text[:20]!r} is out of range")
    return x


def loads(blob: bytes | str, *, max_bytes: int, max_containers: int, floats: bool = False) -> Any:
    """Parses `blob`; StrictJSONError (a ValueError) if it is not plain, bounded JSON.

    Args:
        blob: UTF-8 bytes or a str.
        max_bytes: longest accepted input.
        max_containers: most objects plus arrays (so also the deepest nesting).

    Floats (unless `floats`, and then only finite ones), NaN/Infinity, integers
    over 30 digits and repeated keys are refused.
    """
    raw = blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else bytes(blob)
    if len(raw) > max_bytes:
        raise StrictJSONError(f"{len(raw)} bytes is longer than the {max_bytes} allowed")
    skeleton = _STRINGS.sub(b'""', raw)  # brackets inside strings do not nest
    containers = skeleton.count(b"[") + skeleton.count(b"{")
    if containers > max_containers:
        raise StrictJSONError(f"{containers} objects/arrays is more than the {max_containers} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StrictJSONError(f"not UTF-8: {e}") from None
    try:
        return json.loads(text, parse_float=_finite_float if floats else _no_float, parse_int=_bounded_int,
                          parse_constant=_no_constant,
                          object_pairs_hook=_unique)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as e:  # RecursionError: unreachable after the count, kept as a guard
        raise StrictJSONError(f"not JSON: {e}") from None
