"""What the Redis tier trusts in a value: signing, size caps and the namespace index.

Anyone who can write to the Redis server can write any value under any key.
A chunk value carries its own header and payload checksum, but a checksum is
no proof of origin: a forger copies a header, zeroes the payload and
recomputes it. With a shared secret, replicas append a keyed BLAKE2b tag
(32 bytes) over the Redis key and the value, and refuse any value without a
valid one; without a secret, values are trusted as far as the chunk validator
goes (see the README's trust model).

Pure functions and one small class; the caller's thread and the tier's writer
thread both use them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Optional, Union

from .. import strict_json
from ..errors import InputError

SECRET_ENV = "PYKVSTORE_REMOTE_SECRET"
TAG_BYTES = 32
_MIN_SECRET = 16
_HEX = frozenset("0123456789abcdef")
_MAX_NAMESPACES = 1024
_MAX_PARAMS = 8192


class Signer:
    """Signs and verifies values with a key derived from the replicas' shared secret."""

    def __init__(self, secret: Union[str, bytes]) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw, (bytes, bytearray)) or len(raw) < _MIN_SECRET:
            raise InputError(f"the Redis tier's secret must be at least {_MIN_SECRET} bytes "
                             f"(set remote_options['secret'] or {SECRET_ENV})")
        self._key = hashlib.blake2b(bytes(raw), digest_size=32, person=b"pykvstore-key").digest()

    def tag(self, redis_key: str, value: Any) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=TAG_BYTES, person=b"pykvstore-val1")
        k = redis_key.encode()
        h.update(len(k).to_bytes(4, "little"))
        h.update(k)
        h.update(value)
        return h.digest()

    def verify(self, redis_key: str, signed: bytes) -> Optional[memoryview]:
        """The value without its tag, or None if the tag is missing or wrong."""
        if len(signed) <= TAG_BYTES:
            return None
        mv = memoryview(signed)
        value, tag = mv[:-TAG_BYTES], mv[-TAG_BYTES:]
        if not hmac.compare_digest(self.tag(redis_key, value), tag):
            return None
        return value


def make_signer(secret: Any) -> Optional[Signer]:
    """The signer for `secret`, else for $PYKVSTORE_REMOTE_SECRET, else None (values unsigned)."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if secret is None:
        return None
    if not isinstance(secret, (str, bytes)):
        raise InputError(f"the Redis tier's secret must be str or bytes, got {type(secret).__name__}")
    return Signer(secret)


def parse_namespaces(raw: dict) -> dict[str, str]:
    """digest -> params JSON of the entries of a namespace index that are well formed.

    The index is read back from a shared server: an entry that is not a hex
    digest mapped to a small, flat JSON object (non-UTF-8, deep nesting,
    another type) is left out, never raised.
    """
    found: dict[str, str] = {}
    for k, v in list(raw.items())[:_MAX_NAMESPACES]:
        try:
            digest = k.decode("ascii") if isinstance(k, bytes) else str(k)
            if len(digest) not in (32, 64) or not _HEX.issuperset(digest) or len(v) > _MAX_PARAMS:
                continue
            params = strict_json.loads(v, max_bytes=_MAX_PARAMS, max_containers=16)
        except (UnicodeDecodeError, ValueError, TypeError):
            continue
        if isinstance(params, dict):
            found[digest] = v.decode() if isinstance(v, bytes) else v
    return found
