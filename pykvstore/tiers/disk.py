"""Disk tier: chunk files under <root>/data, written and read by the native engine.

Layout: data/<model-slug>/<namespace>/<k0k1>/<k2k3>/<key>.safetensors. Writes
go to <root>/tmp under a name that records host and pid, then are renamed
into place, so a killed writer leaves only temp files the next open removes.
Damaged files are moved to <root>/quarantine for inspection.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _C

if TYPE_CHECKING:
    import torch

log = logging.getLogger("pykvstore")
HOST = socket.gethostname()
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_seq = itertools.count()


def model_slug(model: str) -> str:
    """A directory name for a model id: "Qwen/Qwen3-8B" -> "Qwen--Qwen3-8B"."""
    return _SLUG.sub("_", model.replace("/", "--"))[:120] or "_"


class DiskTier:
    def __init__(self, root: Path, engine: "_C.FileEngine", direct_write: int, direct_read: int, sync: bool) -> None:
        self.root = root
        self.data = root / "data"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        for d in (self.data, self.tmp, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.engine = engine
        self.direct_write = direct_write
        self.direct_read = direct_read
        self.sync = sync

    def relpath(self, model: str, namespace: str, key: str) -> str:
        return f"data/{model_slug(model)}/{namespace}/{key[0:2]}/{key[2:4]}/{key}.safetensors"

    def abspath(self, rel: str) -> str:
        return str(self.root / rel)

    def write(self, rel: str, buf: "_C.AlignedBuffer", size: int) -> "_C.WriteFuture":
        """Starts a crash-safe write of buf[0:size] to `rel`."""
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{HOST}.{os.getpid()}.{next(_seq)}.{final.name}"
        return self.engine.write(str(final), str(tmp), buf, size, self.direct_write, self.sync)

    def read(self, rel: str, max_size: int, hash_payload: bool = False) -> "_C.ReadFuture":
        """Starts reading a whole file; hash_payload also checksums its payload on the I/O thread."""
        return self.engine.read(self.abspath(rel), self.direct_read, max_size, hash_payload)

    def map(self, rel: str, max_size: int) -> "_C.MapFuture":
        """Starts mapping a whole file; the I/O thread brings its pages in and checksums its payload."""
        return self.engine.map(self.abspath(rel), max_size, True)

    def map_scatter(self, rel: str, max_size: int, layout: _C.PagedLayout, ids: torch.Tensor, skip: int,
                    payload_bytes: int) -> _C.MapFuture:
        """Maps a chunk and copies it into host blocks on an I/O thread, hashing as it goes.

        The blocks are written before the checksum is known.
        """
        return self.engine.map_scatter(self.abspath(rel), max_size, layout, ids.data_ptr(), len(ids), skip,
                                       payload_bytes)

    def remove(self, rel: str) -> None:
        """Deletes a chunk file; a file already gone is fine, and a failure is logged, not raised."""
        try:
            os.unlink(self.root / rel)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", rel, e)

    def quarantine(self, rel: str) -> None:
        """Moves a damaged file aside (kept for inspection, out of the bucket's data)."""
        src = self.root / rel
        dst = self.quarantine_dir / f"{int(time.time() * 1000)}.{src.name}"
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            pass
        except OSError:
            self.remove(rel)

    def clean_tmp(self, alive: Callable[[int], bool]) -> int:
        """Removes temp files this host's dead processes left; returns how many."""
        removed = 0
        for entry in os.scandir(self.tmp):
            host, _, rest = entry.name.partition(".")
            pid = rest.partition(".")[0]
            if host == HOST and pid.isdigit() and not alive(int(pid)):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def chunk_files(self) -> Iterator[str]:
        """Relative paths of every chunk file (for a catalog rebuild)."""
        for dirpath, _, files in os.walk(self.data):
            for f in files:
                if f.endswith(".safetensors"):
                    yield os.path.relpath(os.path.join(dirpath, f), self.root)

    def read_head(self, rel: str, limit: int = 1 << 20) -> tuple[bytes, int]:
        """The first bytes of a file (enough for its header) and its size."""
        with open(self.root / rel, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return f.read(min(size, limit)), size
