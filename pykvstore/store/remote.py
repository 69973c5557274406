"""Remote landing: a load continued from the Redis tier, and the fetched chunks kept locally.

`fetch` runs on the thread of the get (the caller's, or the store's get
thread): one round trip for the chunks past what the local tiers held, each
verified like a local file before it is scattered into the engine's blocks.
`land` runs on the store's put thread: it writes those chunks into the
bucket and the host tier without reading the engine's blocks again.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import _C
from ..bucket import NoRoom, row_from_metadata
from ..catalog import WRITING
from ..chunk_file import MAX_HEADER
from ..errors import ChunkError
from ..layout import PagedKV
from .get import payload_of, sound
from .parts import StoreParts
from .put import PutPipeline


class RemoteLanding:
    """Loads from the remote tier past the local prefix and lands what it fetched.

    submit: hands work to the store's put thread.
    """

    def __init__(self, parts: StoreParts, put: PutPipeline, submit: Callable[..., Any]) -> None:
        self.p = parts
        self._put = put
        self._submit = submit

    def fetch(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, start: int, end: int) -> int:
        """Continues a load from the Redis tier past what the local tiers held (one round trip).

        Fetched chunks are verified like local files, then land in the local
        tiers on the store's worker thread (the engine blocks are not read again).
        """
        p = self.p
        ct, bpc = p.chunk_tokens, p.chunk_tokens // cache.block_size
        nxt = max(end, start) // ct
        if nxt >= n:
            return end
        g = cache.geometry
        ns = p.names.of(g)
        p.names.register(ns)
        shape = g.chunk_shape(ct)
        keys = p.names.keys(ns, toks[: n * ct])
        # a value longer than a chunk of this geometry can be is never read whole
        values = p.remote.get_many(keys[nxt:n], max_bytes=8 + MAX_HEADER + g.chunk_bytes(ct))
        landed = []
        for j, value in enumerate(values):
            c = nxt + j
            if value is None:  # absent or refused: the tier counted it (if it was asked for at all)
                break
            try:
                buf = _C.AlignedBuffer(len(value), p.pool)  # aligned: it lands on disk through O_DIRECT
            except MemoryError:  # pool full and the heap too: the load ends here, a miss
                p.faults.add(OSError(errno.ENOMEM, "no memory to land a remote chunk", keys[c][:16]))
                p.remote.count(misses=sum(v is not None for v in values[j:]))
                break
            np.frombuffer(buf, dtype=np.uint8)[:] = np.frombuffer(value, dtype=np.uint8)
            try:
                hdr = sound(buf, None, keys[c], ns, g, shape)
            except ChunkError as e:
                p.faults.warn_once(f"remote:{keys[c]}", f"remote chunk {keys[c][:16]} is not sound ({e}); a miss")
                p.remote.count(misses=sum(v is not None for v in values[j:]))  # fetched, not served
                break
            payload = payload_of(buf, hdr, g, shape)
            cache.scatter(ids[c * bpc : (c + 1) * bpc], payload, max(0, start - c * ct))
            p.remote.count(hits=1)
            end = (c + 1) * ct
            landed.append((hdr, buf, payload))
        if landed:
            self._submit(self.land, landed)
        return end

    def land(self, landed: list) -> None:
        """Writes chunks fetched remotely into the local tiers (the store's put thread)."""
        p = self.p
        protect = {hdr.metadata["key"] for hdr, _, _ in landed}
        for hdr, buf, payload in landed:
            m = hdr.metadata
            if m["model"] != p.model:  # its row would be another model's (quota, stats, path): not ours to keep
                continue
            rel = p.disk.relpath(p.model, m["namespace"], m["key"])
            try:
                row, _ = row_from_metadata(m, rel, len(buf))
                row.state, row.owner, row.last_access = WRITING, self.p.disk.lease().owner, time.time()
                if not p.bucket.reserve(row, protect):
                    continue
                try:
                    p.disk.write(rel, buf, len(buf)).result()
                    committed = p.bucket.mark_ready(row.key, time.time(), row.owner)
                except (OSError, sqlite3.Error) as e:
                    p.faults.warn_once("land", f"could not keep a remote chunk locally: {e}")
                    self._put.forget(row)
                    return
                if committed:
                    p.host.put(row.key, payload, buf)
            except (NoRoom, ChunkError, sqlite3.Error):
                return
