"""The put pipeline: stage, reserve, write, commit, drop what became unreachable.

`stage` runs on the caller's thread (put_async copies the engine's blocks
into host-pool buffers before it returns); `write` runs on the caller's
thread for a synchronous put and on the store's put thread for put_async.
Checksums and file writes run on the I/O threads, at most `inflight`
chunks at once; each chunk is reserved in the bucket before its write and
committed after it, so a crash leaves no half-written chunk indexed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from typing import Any, Optional

import torch

from .. import _C, defaults
from ..bucket import _UNSET, NoRoom
from ..bucket.config import check_ttl_mode
from ..catalog import READY, WRITING, ChunkRow
from ..chunk_file import CHECKSUM_ALGO, MAX_TAG_INPUT, PAYLOAD_ALIGN, checksum, encode_header, header_length
from ..errors import InputError
from ..keys import FORMAT_VERSION
from ..layout import PagedKV
from ..sizes import parse_duration
from . import prefault
from .checks import check_name
from .parts import StoreParts

Expiry = tuple[Optional[float], Optional[str]]  # (ttl seconds or None, ttl mode)


class PutPipeline:
    """Writes the full chunks of a put into the bucket (and the host and remote tiers)."""

    def __init__(self, parts: StoreParts, unreleased: Optional[set[str]] = None,
                 undropped: Optional[set[str]] = None) -> None:
        self.p = parts
        # reservations a failed write could not release yet, and unreachable chunks a failed
        # drop left indexed (both shared by a store's salted views; retried by retry_releases)
        self._unreleased: set[str] = set() if unreleased is None else unreleased
        self._undropped: set[str] = set() if undropped is None else undropped

    def options(self, tag: Any, ttl: Any, ttl_mode: Optional[str]) -> Expiry:
        """Checks a put's tag; its expiry from its arguments or the bucket's defaults."""
        if tag is not None and not isinstance(tag, str):
            raise InputError(f"tag must be a string, got {type(tag).__name__}")
        if tag is not None:
            check_name(tag, "tag", MAX_TAG_INPUT)
        check_ttl_mode(ttl_mode)
        if ttl is _UNSET:
            config = self.p.bucket.config
            secs = config.get("default_ttl")
            mode = ttl_mode or config.get("ttl_mode", "absolute")
        else:
            secs = None if ttl is None else parse_duration(ttl, "ttl")
            mode = ttl_mode or self.p.bucket.config.get("ttl_mode", "absolute")
        return secs, mode

    def stage(self, toks, cache: PagedKV, ids: torch.Tensor, n: int) -> dict[int, Any]:
        """Chunk index -> a pool buffer holding that chunk's payload at PAYLOAD_ALIGN, for
        the leading chunks the bucket does not hold, as far as the pool has room."""
        if n == 0:
            return {}
        g = cache.geometry
        ct, bpc = self.p.chunk_tokens, self.p.chunk_tokens // cache.block_size
        keys = self.p.names.keys(self.p.names.of(g), toks[: n * ct])
        try:
            held = self.p.bucket.existing(keys, time.time())
        except sqlite3.Error:
            held = set()
        shape, size = g.chunk_shape(ct), PAYLOAD_ALIGN + g.chunk_bytes(ct)
        staged: dict[int, Any] = {}
        for i, key in enumerate(keys):
            if key in held:
                continue
            buf = _C.AlignedBuffer(size, self.p.pool)
            if not buf.from_pool:  # no room left: what is staged is what this put stores
                break
            payload = torch.frombuffer(buf, dtype=torch.uint8)[PAYLOAD_ALIGN:].view(g.view_dtype).view(shape)
            cache.gather(ids[i * bpc : (i + 1) * bpc], payload)
            staged[i] = buf
        if staged and self.p.fault_ahead:  # the next stagings find their pages faulted in, off this thread
            prefault.keep_ahead(self.p.pool, self.p.io_cpus)
        return staged

    def write(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, tag: Optional[str],
              expiry: Expiry, staged: Optional[dict[int, Any]] = None) -> int:
        """Writes the chunks of a put; returns how many leading chunks are held after it.

        With `staged` (put_async), payloads come from those buffers and the
        engine's blocks are never read here: a chunk not staged ends the put.
        """
        p = self.p
        g = cache.geometry
        ns = p.names.of(g)
        p.names.register(ns)
        ct, bpc = p.chunk_tokens, p.chunk_tokens // cache.block_size
        keys = p.names.keys(ns, toks[: n * ct])
        parents = [ns.hex] + keys[:-1]
        ttl, mode = expiry
        self.retry_releases()  # a reservation left by an earlier failure would block its own chunk
        start_time = time.time()
        existing = p.bucket.existing(keys, start_time)
        held_ready = [k for k, state in existing.items() if state == READY]
        if held_ready:
            try:
                p.bucket.refresh(held_ready, None if ttl is None else start_time + ttl, start_time)
            except sqlite3.Error as e:  # they stay held, with the expiry they had: the put goes on
                p.faults.warn_once("refresh", f"could not extend the expiry of held chunks: {e}")
        shape, nbytes = g.chunk_shape(ct), g.chunk_bytes(ct)
        protect = set(keys)
        owner = p.disk.lease().owner  # liveness others check by its lock, not by host:pid
        inflight: deque = deque()
        ok = [False] * n
        written = [0, 0]  # chunks, bytes
        failed_at = n

        def finish_one() -> None:
            nonlocal failed_at
            i, row, buf, payload, fut = inflight.popleft()
            try:
                fut.result()
                committed = p.bucket.mark_ready(row.key, time.time(), row.owner)
            except (OSError, sqlite3.Error) as e:
                p.faults.add(e)
                p.faults.warn_once(f"write:{type(e).__name__}:{getattr(e, 'errno', '')}",
                                   f"storing chunk {row.key[:16]} failed: {e}")
                self.forget(row)
                failed_at = min(failed_at, i)
                return
            if not committed:  # removed while in flight (evict/clear): its file goes unless the key is held again
                self.forget(row)
                failed_at = min(failed_at, i)
                return
            ok[i] = True
            written[0] += 1
            written[1] += row.nbytes
            p.host.put(row.key, payload, buf)
            if p.remote is not None:  # write-through, handed off to the tier's thread
                p.remote.put(row.key, memoryview(buf)[: row.nbytes], ttl,
                             {"model": p.model, "tag": tag or "", "tokens": str(ct), "index": str(i)}, buf)
            p.counters.add(put_chunks_written=1, put_bytes_written=row.nbytes)

        try:
            for i in range(n):
                if failed_at < n:
                    break
                if keys[i] in existing:
                    if existing[keys[i]] != READY:  # reserved by another writer: held only once it is ready
                        failed_at = i
                        break
                    ok[i] = True
                    p.counters.add(put_chunks_present=1)
                    continue
                now = time.time()
                meta = {
                    "format": FORMAT_VERSION, "model": p.model, "namespace": ns.hex, "key": keys[i],
                    "parent": parents[i], "tokens": str(ct), "index": str(i), "created": f"{now:.6f}",
                    "tag": tag or "", "params": json.dumps(ns.params, sort_keys=True, separators=(",", ":")),
                    "ttl": "" if ttl is None else repr(ttl), "ttl_mode": mode or "",
                    "checksum_algo": CHECKSUM_ALGO,
                }
                off = header_length(meta, g.safetensors_dtype, shape, nbytes)
                if staged is not None and i not in staged:
                    failed_at = i  # not copied out of the engine in time (no pool room, or evicted since)
                    break
                rel = p.disk.relpath(p.model, ns.hex, keys[i])
                row = ChunkRow(key=keys[i], parent=parents[i], namespace=ns.hex, model=p.model, chunk_index=i,
                               tokens=ct, nbytes=off + nbytes, path=rel, created=now, last_access=now,
                               tag=tag, state=WRITING, owner=owner, expires=None if ttl is None else now + ttl,
                               sliding_ttl=ttl if ttl is not None and mode == "sliding" else None)
                try:
                    reserved = p.bucket.reserve(row, protect)
                except NoRoom:
                    failed_at = i
                    break
                except sqlite3.Error as e:  # e.g. the disk under the catalog is full
                    p.faults.warn_once("reserve", f"cannot reserve space for a chunk: {e}")
                    failed_at = i
                    break
                if reserved is None:  # another writer got there first: held only once it is ready
                    if p.bucket.existing([keys[i]], time.time()).get(keys[i]) != READY:
                        failed_at = i  # still being written elsewhere (or gone): lookup would not count it
                        break
                    ok[i] = True
                    continue
                try:
                    if staged is not None and off == PAYLOAD_ALIGN:
                        buf = staged.pop(i)  # the payload is in place already
                    else:
                        buf = _C.AlignedBuffer(off + nbytes, p.pool)
                    whole = torch.frombuffer(buf, dtype=torch.uint8)
                    payload = whole[off:].view(g.view_dtype).view(shape)
                    if staged is None:
                        cache.gather(ids[i * bpc : (i + 1) * bpc], payload)
                    elif off != PAYLOAD_ALIGN:  # a header longer than one page: move the payload
                        payload.view(torch.uint8).view(-1).copy_(
                            torch.frombuffer(staged.pop(i), dtype=torch.uint8)[PAYLOAD_ALIGN:])
                    meta["checksum"] = checksum(memoryview(buf)[off:])
                    head = encode_header(meta, g.safetensors_dtype, shape, nbytes)
                    assert len(head) == off, "header length changed with the checksum"
                    whole[:off].copy_(torch.frombuffer(bytearray(head), dtype=torch.uint8))
                    fut = p.disk.write(rel, buf, off + nbytes)
                except BaseException:
                    self.forget(row)
                    raise
                inflight.append((i, row, buf, payload, fut))
                while len(inflight) >= defaults.get("inflight"):
                    finish_one()
        finally:
            while inflight:  # every write started is settled, whatever happened above
                finish_one()
        held = 0
        while held < n and ok[held]:
            held += 1
        if held < n:
            self._drop_unreachable(keys[held:], ok[held:])
        self.retry_releases()
        p.counters.record({"puts": 1, "put_tokens": held * ct, "chunks_written": written[0],
                           "bytes_written": written[1]})
        return held

    def _drop_unreachable(self, keys: list[str], written: list[bool]) -> None:
        """Chunks this put wrote after one that failed: nothing could reach them."""
        mine = set(k for k, w in zip(keys, written) if w)
        if not mine:
            return
        try:
            self.p.bucket.unlink_unreachable(mine)
        except sqlite3.Error as e:  # rows and files stay (unreachable); retried with the releases
            self.p.faults.warn_once("drop", f"could not drop unreachable chunks (will retry): {e}")
            self._undropped.update(mine)
        for k in mine:
            self.p.host.discard(k)

    def forget(self, row: ChunkRow) -> None:
        """Undoes a reservation whose write failed or whose commit found it removed: its row,
        and its file only while no other writer holds the key (Bucket.release; the file at the
        path may be another store's, committed since). Best effort: if the catalog cannot be
        written either, the row stays `writing` under this process, released by the next put
        or reclaimed by the first open after it exits."""
        try:
            self.p.bucket.release(row, row.owner)
        except sqlite3.Error as e:
            self.p.faults.warn_once("abort", f"could not release a failed chunk's reservation (will retry): {e}")
            self._unreleased.add(row.key)

    def retry_releases(self) -> None:
        """Retries reservations `forget` could not release, and drops `_drop_unreachable` could
        not make (the catalog's disk was full, or its lock held): before and after each put, and at close."""
        if self._unreleased:
            # this store's reservations only: one may have been removed since (an evict) and
            # its key reserved by another writer, whose write must not lose its row
            owner = self.p.disk.lease().owner
            for key in list(self._unreleased):
                try:
                    self.p.bucket.abort(key, owner)
                    self._unreleased.discard(key)
                except sqlite3.Error:
                    return
        if self._undropped:
            batch = set(self._undropped)
            try:
                self.p.bucket.unlink_unreachable(batch)  # not those another writer made reachable since
            except sqlite3.Error:
                return
            self._undropped.difference_update(batch)
