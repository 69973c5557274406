"""The owner's controls on a store, by prompt tokens: evict, pin, unpin, extend, clear; gc and resize.

A mixin of KVStore: each call turns tokens into the chained keys of every
namespace the store answers for (`keys_everywhere`) and hands them to the
bucket, which settles them in one catalog transaction. The bucket-wide
controls (by model, tag, age) are on `store.bucket`. Caller's thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

from ..bucket import Bucket, Removed
from ..sizes import parse_duration

if TYPE_CHECKING:
    from .namespaces import Namespaces


class TokenLifecycle:
    bucket: Bucket
    _names: "Namespaces"
    _check_open: Callable[[], None]

    def evict(self, tokens: Any) -> int:
        """Removes the chunks of `tokens` and every chunk chained after them (pinned ones too); returns bytes freed."""
        self._check_open()
        keys = self._names.keys_everywhere(tokens)
        if not keys:
            return 0
        return self.bucket.remove_chains(keys, "manual").bytes

    def pin(self, tokens: Any, ttl: Any = "keep") -> int:
        """Pins the held chunks of `tokens`: capacity never evicts them.

        ttl: "keep" leaves their expiry as it is, None makes them live forever,
        a duration sets a new one. Returns how many chunks were pinned.
        """
        self._check_open()
        return self.bucket.pin(self._names.keys_everywhere(tokens), True, ttl)

    def unpin(self, tokens: Any) -> int:
        self._check_open()
        return self.bucket.pin(self._names.keys_everywhere(tokens), False)

    def extend(self, tokens: Any, ttl: Any) -> int:
        """Sets the held chunks of `tokens` to expire `ttl` from now (None: never); returns how many changed."""
        self._check_open()
        secs = None if ttl is None else parse_duration(ttl, "ttl")
        return self.bucket.extend(self._names.keys_everywhere(tokens), secs)

    def clear(self, *, prefix: Any = None, include_pinned: bool = False, **selectors: Any) -> Removed:
        """Bucket.clear, plus prefix=tokens: that prefix's chunks and every chunk chained after them."""
        self._check_open()
        if prefix is not None:
            selectors["keys"] = self._names.keys_everywhere(prefix)
        return self.bucket.clear(include_pinned=include_pinned, **selectors)

    def gc(self) -> Removed:
        return self.bucket.gc()

    def resize(self, capacity: Union[int, str]) -> Removed:
        return self.bucket.resize(capacity)
