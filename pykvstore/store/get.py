"""The get pipeline: plan, read, verify, scatter, land in the host tier.

`load` runs on the caller's thread for a synchronous get and on the store's
get thread for get_async. Reads (or mappings) and payload hashes run on the
I/O threads, at most `inflight` chunks ahead; the loading thread verifies
each chunk in order and scatters it into the engine's blocks (the I/O
thread already did, for a mapped load into host blocks). A damaged or
vanished chunk ends the load there and becomes a miss from then on.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

import torch

from .. import _C, defaults
from ..catalog import ChunkRow
from ..chunk_file import CHECKSUM_ALGO, ChunkHeader, decode_header, format_checksum, payload_checksum_ok
from ..errors import ChunkError
from ..layout import Geometry, PagedKV
from .namespaces import Namespace
from . import prefault
from .parts import StoreParts

log = logging.getLogger("pykvstore")


def sound(buf: Any, payload_hash: Optional[int], key: str, ns: Namespace, g: Geometry, shape,
          size: Optional[int] = None, image: Optional[Callable[[], Any]] = None) -> ChunkHeader:
    """The header of a chunk image that is exactly the chunk asked for; ChunkError otherwise.

    size: the file's size when buf holds only its header (a mapped read's copy of it; the
    payload was hashed (XXH3) on the I/O thread). image: makes the whole image, for a
    chunk whose checksum is not XXH3 (written before it) and so is hashed here.
    """
    hdr = decode_header(buf, len(buf) if size is None else size)
    if image is not None and hdr.metadata.get("checksum_algo") != CHECKSUM_ALGO:
        buf = image()
        # what the checksum checks must be what the I/O thread copied (and hashed) into the blocks
        if payload_hash is not None and _C.xxh3_64(buf, hdr.payload_offset) != payload_hash:
            raise ChunkError("the file changed while it was loaded")
    m = hdr.metadata
    if m.get("key") != key or m.get("namespace") != ns.hex:
        raise ChunkError("it holds another chunk (key or namespace differ)")
    if hdr.shape != shape or hdr.dtype != g.safetensors_dtype:
        raise ChunkError(f"shape {hdr.shape} {hdr.dtype} does not match the cache's {shape} {g.safetensors_dtype}")
    if not payload_checksum_ok(hdr, buf, payload_hash):
        raise ChunkError("payload checksum mismatch")
    return hdr


def payload_of(buf: Any, hdr: ChunkHeader, g: Geometry, shape) -> torch.Tensor:
    """The payload of a sound chunk image, as a tensor of the chunk's shape (no copy)."""
    payload = torch.frombuffer(buf, dtype=torch.uint8, offset=hdr.payload_offset, count=hdr.nbytes)
    return payload.view(g.view_dtype).view(shape)


class GetPipeline:
    """Loads the held prefix of a get from the host tier and the bucket's files.

    mmap: loads into host blocks the native copier knows copy from the file's mapping on
    the I/O threads, with no read buffer. Python never reads a mapping itself: the
    I/O thread copies the header out, and the host tier's copy goes through the
    guarded MapResult.copy_to, so a file truncated in place while mapped (SIGBUS
    on the pages past its new end) fails that read, never the process.
    """

    def __init__(self, parts: StoreParts, mmap: bool) -> None:
        self.p = parts
        self._mmap = mmap
        # The pool pages a cold load of this model's chunks would write, faulted in now (prefault.py).
        self.prefault: Optional[threading.Thread] = None
        if parts.fault_ahead:
            try:
                stored = parts.bucket.catalog.usage(parts.model)[0]
            except sqlite3.Error:
                stored = 0
            self.prefault = prefault.start(parts.pool, stored, parts.io_cpus)

    def load(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, start: int) -> int:
        """Loads chunks from chunk start // chunk_tokens on; returns the end of what is loaded (0: none)."""
        p = self.p
        g = cache.geometry
        ns = p.names.of(g)
        ct, bpc = p.chunk_tokens, p.chunk_tokens // cache.block_size
        keys = p.names.keys(ns, toks[: n * ct])
        now = time.time()
        rows = p.bucket.ready_prefix(keys, now)
        first = start // ct
        if len(rows) <= first:
            p.counters.record({"gets": 1, "miss_tokens": len(toks) - start})
            return 0
        shape, nbytes = g.chunk_shape(ct), g.chunk_bytes(ct)
        max_size = 2 * (nbytes + (1 << 20))  # anything larger is not one of our chunks
        pending: deque = deque()
        copies: list = []  # device copies in flight and the host chunks they read
        nxt = first
        end = 0
        # A load into host blocks the native copier knows copies from the file's
        # mapping, with no read buffer: the I/O thread does that copy itself
        # while it verifies the chunk. Other loads read into a buffer.
        layout = cache.host_layout if self._mmap and cache.device.type == "cpu" else None
        # Cold files go around the page cache when the host tier keeps what this load reads (defaults' cold_read):
        # all of its chunks, host hits included. Counting only those read from disk, a prompt larger than the
        # host tier evicted its own hits (read with O_DIRECT before, so cold again) and went to the disk every time.
        direct = p.disk.cold_direct((len(rows) - first) * nbytes, p.host.capacity)

        def read(i: int, row: ChunkRow):
            rel = p.disk.path_of(row)  # derived from (model, namespace, key), never the row's path
            if layout is not None:
                return p.disk.map_scatter(rel, max_size, layout, ids[i * bpc : (i + 1) * bpc],
                                          max(0, start - i * ct), nbytes, direct)
            return p.disk.read(rel, max_size, True, direct)

        def submit_more() -> None:
            nonlocal nxt
            while nxt < len(rows) and len(pending) < defaults.get("inflight"):
                row = rows[nxt]
                src = p.host.get(row.key)
                pending.append((nxt, row, read(nxt, row) if src is None else src))
                nxt += 1

        submit_more()
        loaded_keys: list[str] = []
        bytes_read = 0
        while pending:
            i, row, src = pending.popleft()
            if isinstance(src, torch.Tensor):
                payload, from_disk, nread, copied = src, False, 0, False
            else:
                payload, nread, copied = self._verified(src, row, ns, g, shape)
                from_disk = True
                if payload is None and not copied:  # blocks an I/O thread wrote past here count as not loaded
                    break
            if not copied:
                # While reads are in flight the I/O threads hold the cores: copy on this one.
                busy = any(not isinstance(q[2], torch.Tensor) for q in pending)
                cache.scatter(ids[i * bpc : (i + 1) * bpc], payload, max(0, start - i * ct), 1 if busy else 0,
                              copies)
            end = (i + 1) * ct
            loaded_keys.append(row.key)
            bytes_read += nread
            if from_disk:
                p.counters.add(disk_hits=1, get_bytes_read=nread)
            else:
                p.counters.add(host_hits=1)
            submit_more()
        for _, _, src in pending:  # after a damaged chunk: let reads in flight finish, unused
            if not isinstance(src, torch.Tensor):
                try:
                    src.result()
                except OSError:
                    pass
        for ticket, _ in copies:  # the chunks' host memory is reused once their copies are done
            ticket.wait()
        if p.remote is not None and loaded_keys:
            self._touch_remote(rows[first : first + len(loaded_keys)], max_size, now)
        if p.fault_ahead and loaded_keys:  # what this load kept in the host tier took pool pages
            prefault.keep_ahead(p.pool, p.io_cpus)
        hit = max(0, end - start)
        p.counters.record({"gets": 1, "hit_tokens": hit, "miss_tokens": len(toks) - start - hit,
                           "bytes_read": bytes_read}, touch=keys[:first] + loaded_keys)
        return end

    def _verified(self, fut, row: ChunkRow, ns: Namespace, g: Geometry,
                  shape) -> tuple[Optional[torch.Tensor], int, bool]:
        """A chunk read from disk: (payload, bytes read, False) for a read buffer, (None,
        bytes read, True) for a mapped chunk the I/O thread already copied into the
        blocks, or (None, 0, False) and the chunk dropped if it is not sound."""
        try:
            result = fut.result()  # read (or mapped and copied) and hashed on an I/O thread
            if result.payload_hash is None:
                raise ChunkError("no payload after the header")
            if isinstance(result, _C.MapResult):
                hdr = sound(result.header, result.payload_hash, row.key, ns, g, shape, result.size,
                            lambda: self._whole(result))
                if not result.scattered:  # a sound chunk's payload is always the size the I/O thread copies
                    raise ChunkError("payload not copied by the I/O thread")
            else:
                hdr = sound(result.buffer, result.payload_hash, row.key, ns, g, shape)
        except (ChunkError, OSError) as e:
            self.p.faults.add(e if isinstance(e, OSError) else ChunkError(f"{self.p.disk.path_of(row)}: {e}"))
            self._drop_damaged(row, e)
            return None, 0, False
        except MemoryError:  # no memory to check it (a legacy chunk's whole-file copy): a miss, the chunk is kept
            self.p.faults.add(OSError(errno.ENOMEM, "no memory to verify the chunk", str(self.p.disk.path_of(row))))
            return None, 0, False
        if isinstance(result, _C.MapResult):  # in the blocks already; the host tier gets a copy
            self._keep_copy(row.key, result, hdr, g, shape)
            return None, result.size, True
        payload = payload_of(result.buffer, hdr, g, shape)
        self.p.host.put(row.key, payload, result.buffer)  # a pool buffer the store owns
        return payload, len(result.buffer), False

    def _touch_remote(self, rows: list, max_size: int, now: float) -> None:
        """Local hits reach the Redis tier too: sliding TTLs extend the remote expiry, and a
        chunk the server lost (a restart without persistence, its own eviction) is written
        again, read back and verified from the local file on the tier's thread, rate-limited
        there (RedisTier.touch). Only queues; the caller's thread does no I/O here."""
        p = self.p
        paths = {r.key: p.disk.path_of(r) for r in rows}

        def load(key: str) -> Optional[tuple]:
            res = p.disk.read(paths[key], max_size, True, p.disk.cold_read == "direct").result()
            hdr = decode_header(res.buffer, len(res.buffer))
            if hdr.metadata["key"] != key or not payload_checksum_ok(hdr, res.buffer, res.payload_hash):
                return None
            m = hdr.metadata
            meta = {"model": m["model"], "tag": m.get("tag", ""), "tokens": m["tokens"], "index": m["index"]}
            return memoryview(res.buffer), meta, res.buffer, (m["model"], m["namespace"], m["params"])

        for r in rows:
            ttl = r.sliding_ttl if r.sliding_ttl else (r.expires - now if r.expires else None)
            if ttl is None or ttl > 0:
                p.remote.touch([r.key], ttl, load)

    @staticmethod
    def _whole(mapped: "_C.MapResult") -> "_C.AlignedBuffer":
        """A mapped file's whole image, copied under the native SIGBUS guard (OSError when it shrank)."""
        buf = _C.AlignedBuffer(mapped.size)
        mapped.copy_to(buf, 0, mapped.size)
        return buf

    def _keep_copy(self, key: str, mapped: "_C.MapResult", hdr: ChunkHeader, g: Geometry, shape) -> None:
        """Keeps a mapped chunk in the host tier as a copy the store owns, verified again.

        The host tier never holds a mapping: a file overwritten in place later
        would change its pages (served unverified), and one truncated in place
        would raise SIGBUS at the next hit. The copy is made under the native
        SIGBUS guard (a file cut short meanwhile: nothing kept) and hashed after
        it is made, so bytes changed under the mapping meanwhile are never kept.
        """
        p = self.p
        if hdr.nbytes > p.host.capacity:
            return
        try:
            buf = _C.AlignedBuffer(hdr.nbytes, p.pool)
        except (MemoryError, RuntimeError):
            return  # no pool room: the next hit maps and verifies the file again
        try:
            mapped.copy_to(buf, hdr.payload_offset, hdr.nbytes)
        except OSError:
            return  # truncated since the I/O thread copied it: the next hit finds out what it holds now
        dst = torch.frombuffer(buf, dtype=torch.uint8, count=hdr.nbytes)
        algo = hdr.metadata.get("checksum_algo", "xxh64")
        value = _C.xxh3_64(buf) if algo == CHECKSUM_ALGO else _C.xxh64(buf)
        if format_checksum(value) == hdr.metadata["checksum"]:
            p.host.put(key, dst.view(g.view_dtype).view(shape), buf)

    def _drop_damaged(self, row: ChunkRow, err: Exception) -> None:
        """A damaged or missing chunk: a miss from now on, its file kept aside, its stranded tail dropped."""
        p = self.p
        vanished = isinstance(err, FileNotFoundError)
        if vanished:
            log.info("chunk %s vanished (evicted elsewhere); treating it as a miss", row.key[:16])
        else:
            rel = p.disk.path_of(row)
            p.faults.warn_once(f"damaged:{rel}", f"chunk file {rel} is damaged ({err}); moved aside, served as a miss")
            p.disk.quarantine(rel)
            p.counters.add(corrupt_chunks=1)
        try:
            if vanished:
                for r in p.bucket.unlink_chunks([row.key], tails=True):
                    p.host.discard(r.key)
            else:
                p.bucket.remove_chains([row.key], "corrupt")
        except sqlite3.Error as e:
            p.faults.warn_once("drop", f"could not drop a damaged chunk from the catalog: {e}")
