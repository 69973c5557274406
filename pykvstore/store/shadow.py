"""The 0 GB tier (shadow mode) and the access history, from the store's side.

Every put is recorded (recorder.py), whatever the capacity: sizing works for a
real bucket as well as a shadow one. When the bucket's capacity is 0 the store
is a shadow: `put` and `put_async` record and return 0 without reading the
engine's blocks, `get` loads nothing, `lookup` answers 0 without asking the
catalog. The engine computes every token, as it would without a cache, and
pays only for hashing the prompt's chunks (which a lookup does anyway) and an
append to a list.

Runs on the caller's thread (the engine's); the recorder's thread writes the
history. The capacity is read again at most every CHECK_SECONDS, so a resize
from another process (out of 0, or into it) takes effect that soon: storing
starts at once, with nothing to restart.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from concurrent.futures import Future
from typing import Any, Optional, Union

from ..bucket import Bucket
from ..chunk_file import PAYLOAD_ALIGN
from ..layout import Geometry
from ..recorder import Recorder, Stream, pack_keys
from .namespaces import Namespaces

CHECK_SECONDS = 0.5
log = logging.getLogger("pykvstore")


class Shadow:
    """Records a store's puts; says whether its bucket is a 0 GB one."""

    def __init__(self, bucket: Bucket, record: bool, budget: Union[int, str, None]) -> None:
        self._bucket = bucket
        self.recorder: Optional[Recorder] = None
        if record:
            try:
                self.recorder = Recorder(bucket.root, budget)
            except (sqlite3.Error, OSError) as e:  # sizing is advisory: the store still serves
                log.warning("pykvstore: cannot record accesses in %s (%s); sizing will not see this process",
                            bucket.root, e)
        self._active = bucket.capacity == 0
        self._checked = time.monotonic()
        self._streams: dict[tuple[str, Optional[str], Geometry], Stream] = {}

    def active(self) -> bool:
        """True while the bucket's capacity is 0 (as of at most CHECK_SECONDS ago)."""
        now = time.monotonic()
        if now - self._checked >= CHECK_SECONDS:
            self._checked = now
            try:
                self._active = self._bucket.capacity == 0
            except sqlite3.Error:
                pass  # keep the last answer: the catalog is busy or failing, the engine is not
        return self._active

    def record(self, names: Namespaces, toks: Any, geometry: Geometry, n: int, tag: Optional[str]) -> None:
        """One put of `toks` (its first `n` full chunks form the chain), keyed in `names`
        (the calling store's: a tenant's view of a shared store has its own salt)."""
        if self.recorder is None or n == 0:
            return
        ns = names.of(geometry)
        names.register(ns)  # a lookup without tensors finds the namespace after a resize
        ct = names.chunk_tokens
        key = (ns.hex, tag, geometry)
        stream = self._streams.get(key)
        if stream is None:
            # what a bucket spends per chunk: the header page and the payload (chunk_file.py)
            stream = self._streams[key] = Stream(names.model, tag or "", ns.hex, ct,
                                                 PAYLOAD_ALIGN + geometry.chunk_bytes(ct))
        self.recorder.record(stream, len(toks), pack_keys(names.keys(ns, toks[: n * ct])))

    def lookup(self) -> None:
        if self.recorder is not None:
            self.recorder.count_lookup()

    @staticmethod
    def done(value: Any) -> Future:
        f: Future = Future()
        f.set_result(value)
        return f

    def flush(self) -> None:
        """Writes this process's waiting records now (stats read what every process wrote)."""
        if self.recorder is not None:
            self.recorder.flush()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
