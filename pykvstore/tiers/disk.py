"""Disk tier: chunk files under <root>/data, written and read by the native engine.

Layout: data/<model-slug>/<namespace>/<k0k1>/<k2k3>/<key>.safetensors. Writes
go to <root>/tmp under a name that records host and pid, then are renamed
into place, so a killed writer leaves only temp files the next open removes.
Damaged files are moved to <root>/quarantine for inspection.

Paths: every chunk path is checked against that layout and nothing inside the
bucket is followed through a symbolic link (safe_paths.py has the rule).

Reads go through the page cache (mapped, or read into buffers), except for a
chunk file mostly out of it (a cold restart, or a chunk just written with
O_DIRECT), which defaults' cold_read decides: "auto" (the default) reads it
with O_DIRECT into a pool buffer when the load that asks for it fits the host
tier, which then keeps the verified chunk, so the next load of it is a memory
hit and a page-cache copy would only be a second copy of the same bytes; a
load larger than the host tier (or a store without one) reads through the page
cache, the only cache its next load can hit. "direct" reads every cold file
with O_DIRECT, "cache" none. Measured on a shared 2-core machine, cold loads
through the page cache ran at 0.3-0.5x of the disk's limit, with O_DIRECT at
0.84-1.0x (benchmarks/bench_transfer.py --cold-only). With readahead on, the
engine asks for the missing pages of every file a load has in flight when it
is submitted. The check and the submission run on the caller's thread; the
reads, checksums and copies on the I/O threads.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import safe_paths
from .safe_paths import UnsafePath, check_chunk_rel, check_digest, open_dir, open_regular
from ..lease import Lease
from .. import _C, defaults

if TYPE_CHECKING:
    import torch

log = logging.getLogger("pykvstore")
HOST = socket.gethostname()
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_seq = itertools.count()
# What a scan of data/ may yield: any plain relative path below data/ (checked again before use), whatever
# its names hold (an operator's '<key> (copy).safetensors', a newline, any letter): held to [A-Za-z0-9._-],
# such a file could be neither read, moved aside nor removed, and fsck --repair never got rid of it.
_SCAN_REL = re.compile(r"data(?:/(?!\.\.?(?:/|\Z))[^/\x00]+)+")


def model_slug(model: str) -> str:
    """A directory name for a model id: "Qwen/Qwen3-8B" -> "Qwen--Qwen3-8B" ("." and ".." become "_", "__")."""
    slug = _SLUG.sub("_", model.replace("/", "--"))[:120] or "_"
    return "_" * len(slug) if slug in (".", "..") else slug


class DiskTier:
    def __init__(self, root: Path, engine: "_C.FileEngine", direct_write: int, direct_read: int, sync: bool) -> None:
        self.root = root
        self.data = root / "data"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        for d in (self.data, self.tmp, self.quarantine_dir):
            if d.is_symlink():
                raise UnsafePath(40, f"{d.name}/ is a symbolic link: nothing inside a bucket is followed through a "
                                 "link; link or mount the bucket directory itself instead", str(d))
            d.mkdir(parents=True, exist_ok=True)
        self.base = os.path.realpath(root)  # the root is resolved once; below it, no link is followed
        self._lease: Optional[Lease] = None
        self._lease_lock = threading.Lock()
        self.engine = engine
        self.direct_write = direct_write
        self.direct_read = direct_read
        self.sync = sync
        self.cold_read = defaults.get("cold_read")
        engine.readahead_enabled = defaults.get("readahead")

    def cold_direct(self, load_bytes: int, host_capacity: int) -> bool:
        """Whether a load of chunks totalling `load_bytes` reads its cold files with O_DIRECT.

        "auto": only when the host tier (of `host_capacity` bytes) keeps all of
        it, so the chunks read are memory hits next time; a larger load would
        evict its own first chunks, and they would be cold again for the next
        load, which the page cache would have served. `load_bytes` counts every
        chunk the load touches, its host hits too: they are evicted as surely
        as chunks read from disk. Caller's thread.
        """
        if self.cold_read == "auto":
            return 0 < load_bytes <= host_capacity
        return self.cold_read == "direct"

    def _read_cold(self, path: str, max_size: int, direct: bool) -> "_C.ReadFuture | None":
        """An O_DIRECT read, hashed on the I/O thread, when `direct` and the file is mostly out of the page cache."""
        if direct and self.engine.is_cold(path, max_size):
            return self.engine.read(path, max(self.direct_read, 1), max_size, True)
        return None

    def relpath(self, model: str, namespace: str, key: str) -> str:
        """The one place a chunk's path comes from: (model, namespace, key), each component checked."""
        check_digest(namespace, "namespace")
        check_digest(key, "chunk key")
        if not isinstance(model, str):  # a crafted catalog row (SQLite keeps a BLOB in a TEXT column)
            raise UnsafePath(errno.EINVAL, "model is not text", repr(model)[:80])
        return f"data/{model_slug(model)}/{namespace}/{key[0:2]}/{key[2:4]}/{key}.safetensors"

    def lease(self) -> Lease:
        """This process's writer lease on the bucket, taken at its first write (lease.py);
        rows it reserves and temp files it writes name it. Any thread."""
        with self._lease_lock:
            if self._lease is None:
                self._lease = Lease(self.root)
            return self._lease

    def release_lease(self) -> None:
        """At close, after the last write: what this process left "writing" becomes reclaimable."""
        with self._lease_lock:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    def path_of(self, row: Any) -> str:
        """A catalog row's chunk path, derived from its (model, namespace, key): the row's own
        `path` column is never used to touch a file."""
        return self.relpath(row.model, row.namespace, row.key)

    def abspath(self, rel: str) -> str:
        """The absolute path of `rel` under the resolved root. The native engine opens only
        that exact file (a path with `..`, a link or a doubled slash fails its check)."""
        return f"{self.base}/{rel}"

    def _root_fd(self) -> int:
        return os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def write(self, rel: str, buf: "_C.AlignedBuffer", size: int) -> "_C.WriteFuture":
        """Starts a crash-safe write of buf[0:size] to `rel`."""
        final = Path(self.abspath(rel))
        root = self._root_fd()
        try:
            os.close(open_dir(root, os.path.dirname(rel), create=True))  # no link on the way, made if missing
        finally:
            os.close(root)
        tmp = self.tmp / f"{self.lease().tmp_prefix}.{next(_seq)}.{final.name}"
        return self.engine.write(str(final), str(tmp), buf, size, self.direct_write, self.sync)

    def read(self, rel: str, max_size: int, hash_payload: bool = False,
             cold_direct: bool = False) -> "_C.ReadFuture":
        """Starts reading a whole file; hash_payload also checksums its payload on the I/O thread.
        cold_direct (see cold_direct()): a cold file is read with O_DIRECT."""
        path = self.abspath(rel)
        cold = self._read_cold(path, max_size, cold_direct) if hash_payload and self.direct_read == 0 else None
        return cold or self.engine.read(path, self.direct_read, max_size, hash_payload)

    def map(self, rel: str, max_size: int, cold_direct: bool = False) -> "_C.MapFuture | _C.ReadFuture":
        """Starts mapping a whole file; the I/O thread brings its pages in and checksums its payload.
        A cold file is read instead (a ReadFuture) when cold_direct."""
        path = self.abspath(rel)
        return self._read_cold(path, max_size, cold_direct) or self.engine.map(path, max_size, True)

    def map_scatter(self, rel: str, max_size: int, layout: _C.PagedLayout, ids: torch.Tensor, skip: int,
                    payload_bytes: int, cold_direct: bool = False) -> "_C.MapFuture | _C.ReadFuture":
        """Maps a chunk and copies it into host blocks on an I/O thread, hashing as it goes.

        The blocks are written before the checksum is known. A cold file is
        read instead when cold_direct (a ReadFuture: the caller copies it after the check).
        """
        path = self.abspath(rel)
        return self._read_cold(path, max_size, cold_direct) or self.engine.map_scatter(
            path, max_size, layout, ids.data_ptr(), len(ids), skip, payload_bytes)

    def remove(self, rel: str) -> None:
        """Deletes a chunk file; a file already gone is fine, and a failure is logged, not raised.

        Only a chunk path inside data/, reached without following a link; the
        entry itself is unlinked (a link or FIFO there goes, never its target).
        """
        try:
            check_chunk_rel(rel)
            root = self._root_fd()
            try:
                parent = open_dir(root, os.path.dirname(rel))
            finally:
                os.close(root)
            try:
                os.unlink(os.path.basename(rel), dir_fd=parent)
            finally:
                os.close(parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", str(rel)[:200], e)

    def set_aside(self, rel: str) -> Optional[str]:
        """Moves a chunk file out of data/ into tmp/ under one of this writer's temp names and
        returns that name (None: no file there). For an eviction, inside its transaction:
        unlinked once it commits, put back if it rolls back; a writer killed in between leaves
        a dead writer's temp file, which the next open removes, not a chunk file that fsck
        --repair would index again. Raises OSError (UnsafePath) when the file cannot be moved."""
        check_chunk_rel(rel)
        name = os.path.basename(rel)
        aside = f"{self.lease().tmp_prefix}.{next(_seq)}.{name}"
        root = self._root_fd()
        try:
            try:
                parent = open_dir(root, os.path.dirname(rel))
            except FileNotFoundError:
                return None
            try:
                tmp = open_dir(root, "tmp")
            except OSError:
                os.close(parent)
                raise
        finally:
            os.close(root)
        try:
            os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=tmp)
        except FileNotFoundError:
            return None
        finally:
            os.close(parent)
            os.close(tmp)
        return aside

    def drop_aside(self, aside: str, rel: Optional[str] = None) -> None:
        """Unlinks a file set_aside moved (rel=None), or moves it back to `rel` (a rolled-back
        eviction). A failure is logged: a file left in tmp/ goes when this writer's lease does."""
        try:
            root = self._root_fd()
            try:
                tmp = open_dir(root, "tmp")
                try:
                    if rel is None:
                        os.unlink(aside, dir_fd=tmp)
                    else:
                        parent = open_dir(root, os.path.dirname(rel), create=True)
                        try:
                            os.rename(aside, os.path.basename(rel), src_dir_fd=tmp, dst_dir_fd=parent)
                        finally:
                            os.close(parent)
                finally:
                    os.close(tmp)
            finally:
                os.close(root)
        except OSError as e:
            log.warning("could not %s tmp/%s: %s", "remove" if rel is None else f"put back {rel[:200]} from", aside, e)

    def quarantine(self, rel: str) -> None:
        """Moves a damaged file (or link, or FIFO) aside for inspection, out of the bucket's data.

        Scan results may name a link to a directory (data/<model> as a link):
        that entry itself is moved, never what it points to.
        """
        name = os.path.basename(str(rel))
        try:
            if not _SCAN_REL.fullmatch(str(rel)):
                check_chunk_rel(rel)
            root = self._root_fd()
            try:
                parent = open_dir(root, os.path.dirname(rel))
                qdir = open_dir(root, "quarantine")
            finally:
                os.close(root)
            try:
                os.rename(name, f"{int(time.time() * 1000)}.{name}", src_dir_fd=parent, dst_dir_fd=qdir)
            finally:
                os.close(parent)
                os.close(qdir)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not move %s aside (%s); removing it", str(rel)[:200], e)
            self.remove(rel)

    def clean_tmp(self, dead: Callable[[str], bool]) -> int:
        """Removes temp files whose writer `dead(name)` proves dead (lease.Reclaimer.dead_tmp); returns how many."""
        removed = 0
        for entry in os.scandir(self.tmp):
            if dead(entry.name):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def chunk_files(self) -> Iterator[str]:
        """Relative paths of every chunk file (for a catalog rebuild and fsck).

        Links are not followed; a link to a directory inside data/ is yielded
        too, so a scan reports it (and a rebuild sets it aside) like any other
        entry that is not a chunk file.
        """
        for dirpath, dirs, files in os.walk(self.data):
            for d in dirs:
                if os.path.islink(os.path.join(dirpath, d)):
                    yield os.path.relpath(os.path.join(dirpath, d), self.root)
            for f in files:
                if f.endswith(".safetensors"):
                    yield os.path.relpath(os.path.join(dirpath, f), self.root)

    def read_head(self, rel: str, limit: int = 1 << 20) -> tuple[bytes, int]:
        """The first bytes of a chunk file (enough for its header) and its size.

        Regular files reached without links only (UnsafePath otherwise); a FIFO never blocks.
        """
        if not _SCAN_REL.fullmatch(str(rel)):
            check_chunk_rel(rel)
        fd = open_regular(f"{self.base}/{rel}")
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return f.read(min(size, limit)), size
