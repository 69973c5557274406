"""Integrity: the catalog rebuilt from the chunk files, dead writers' leftovers reclaimed, fsck.

Runs on the caller's thread: opening a bucket (rebuild and recovery, under
the bucket's `.lock`), `gc` (recovery) and `fsck` (the CLI). The chunk files
are the truth: each header names its key, chain and namespace, so a lost or
damaged catalog is rebuilt from them, and a damaged file goes to quarantine.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from ..catalog import READY, WRITING, Catalog, ChunkRow
from ..chunk_file import decode_header, payload_checksum_ok
from ..errors import ChunkError
from ..lease import Reclaimer
from ..tiers.disk import DiskTier
from ..tiers.safe_paths import UnsafePath

log = logging.getLogger("pykvstore")


def row_from_metadata(m: dict[str, str], rel: str, size: int) -> tuple[ChunkRow, dict[str, Any]]:
    """A ready catalog row (and namespace params) from the metadata of a header decode_header
    returned: that validator has checked every field read here (present, typed, in range; params
    a JSON object), so nothing here can fail on it (both callers, a rebuild and a remote landing,
    pass only such headers)."""
    created = float(m["created"])
    ttl = float(m["ttl"]) if m.get("ttl") else None
    return ChunkRow(
        key=m["key"], parent=m["parent"], namespace=m["namespace"], model=m["model"],
        chunk_index=int(m["index"]), tokens=int(m["tokens"]), nbytes=size, path=rel,
        created=created, last_access=created, tag=m.get("tag") or None, state=READY,
        expires=created + ttl if ttl else None,
        sliding_ttl=ttl if ttl and m.get("ttl_mode") == "sliding" else None), json.loads(m["params"])


class Integrity:
    """Part of Bucket: keeps the catalog true to the files. Uses the bucket's `root`, `disk`, `engine`, `catalog`."""

    root: Path
    disk: DiskTier
    engine: Any  # _C.FileEngine
    catalog: Catalog

    def _open_catalog(self) -> Catalog:
        path = self.root / "catalog.sqlite"
        fresh = not path.exists() or path.stat().st_size == 0  # an empty file is no index: rebuild it
        if fresh:  # stale WAL/SHM of a deleted catalog must not be replayed into a new one
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            catalog = Catalog(str(path))
        except sqlite3.DatabaseError as e:
            log.warning("catalog %s is damaged (%s); rebuilding it from the chunk files", path, e)
            stamp = int(time.time() * 1000)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(path) + suffix)
                if p.exists():
                    os.replace(p, self.root / "quarantine" / f"{stamp}.catalog.sqlite{suffix}")
            catalog = Catalog(str(path))
            fresh = True
        if fresh:
            self._rebuild(catalog)
        return catalog

    def row_from_file(self, rel: str) -> tuple[ChunkRow, dict[str, Any]]:
        """A ready catalog row (and namespace params) from a chunk file's header; ChunkError if unsound."""
        try:
            head, size = self.disk.read_head(rel)
            m = decode_header(head, size).metadata
        except OSError as e:
            raise ChunkError(str(e)) from None
        if Path(rel).stem != m.get("key"):
            raise ChunkError("file name does not match its key")
        if rel != self.disk.relpath(m["model"], m["namespace"], m["key"]):
            raise ChunkError("file is not where its header's model, namespace and key place it")
        return row_from_metadata(m, rel, size)

    def _rebuild(self, catalog: Catalog) -> None:
        """Indexes every chunk file from its header; damaged files go to quarantine."""
        rows: list[ChunkRow] = []
        for rel in self.disk.chunk_files():
            try:
                row, params = self.row_from_file(rel)
            except ChunkError as e:
                log.warning("rebuild: %s is not a valid chunk (%s); moved aside", rel, e)
                self.disk.quarantine(rel)
                continue
            rows.append(row)
            catalog.add_namespace(row.namespace, row.model, params)
        n = catalog.insert_many(rows)
        if rows:
            log.info("rebuilt catalog of %s: %d chunks", self.root, n)

    def _recover(self) -> list[ChunkRow]:
        """Reclaims what writers that died mid-write left behind: only writers whose lease
        lock this process can take (lease.py), whatever host or pid namespace they ran in."""
        dead = []
        with Reclaimer(self.root) as proof:
            for row in self.catalog.writing_rows():
                if proof.dead(row.owner):
                    with self.catalog.transaction() as c:
                        gone = c.execute(f"DELETE FROM chunks WHERE key = ? AND state = {WRITING} AND owner = ?",
                                         (row.key, row.owner)).rowcount
                    if gone:
                        try:
                            self.disk.remove(self.disk.path_of(row))
                        except UnsafePath:  # a key or namespace that is no digest names no file
                            pass
                        dead.append(row)
            self.disk.clean_tmp(proof.dead_tmp)
            proof.sweep()
        return dead

    def fsck(self, repair: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
        """Checks every chunk file against the catalog and its checksum; repair fixes what it finds.

        Repair: missing or damaged chunks leave the catalog (damaged files to
        quarantine, with the tails they strand), files the catalog lacks are
        indexed from their headers, leftovers of dead writers are removed.
        """
        now = time.time()
        rows = self.catalog.rows(f"state = {READY}")
        files = set(self.disk.chunk_files())
        report: dict[str, Any] = {"checked": 0, "ok": 0, "missing": [], "damaged": [], "unindexed": [],
                                  "dead_writers": 0, "repaired": False}
        unnamed: dict[str, str] = {}  # rows no path can be derived for (a key or namespace that is no digest)

        def rel_of(row: ChunkRow) -> Optional[str]:
            try:
                return self.disk.path_of(row)
            except UnsafePath as e:
                unnamed[row.key] = str(e)
                return None

        writing = {rel_of(r) for r in self.catalog.writing_rows()} - {None}
        # every row once, then every file no row names (a file is counted once, not once per loop)
        total = len(rows) + len(files - {rel_of(r) for r in rows} - writing)
        damaged_rows: list[str] = []  # keys whose own file is damaged (an unindexed file's name is no row's)
        for i, row in enumerate(rows):
            if progress:
                progress(i + 1, total)
            report["checked"] += 1
            rel = rel_of(row)
            if rel is None:  # damaged, with no file of its own to move aside (a sound one is indexed below)
                report["damaged"].append({"key": row.key, "path": None, "error": unnamed[row.key]})
                damaged_rows.append(row.key)
                continue
            if rel not in files:
                report["missing"].append(row.key)
                continue
            files.discard(rel)
            try:
                # no larger than get would read for this row: a 1 TiB sparse file there is damaged, not read
                res = self.engine.read(self.disk.abspath(rel), 0, 2 * (max(row.nbytes, 0) + (1 << 20)), True).result()
                hdr = decode_header(res.buffer, len(res.buffer))
                if hdr.metadata.get("key") != row.key or hdr.metadata.get("namespace") != row.namespace:
                    raise ChunkError("holds another chunk")
                if res.payload_hash is None or not payload_checksum_ok(hdr, res.buffer, res.payload_hash):
                    raise ChunkError("checksum mismatch")
                report["ok"] += 1
            except (ChunkError, OSError) as e:
                report["damaged"].append({"key": row.key, "path": rel, "error": str(e)})
                damaged_rows.append(row.key)
        unindexed: list[tuple[ChunkRow, dict[str, Any]]] = []
        for j, rel in enumerate(sorted(files - writing)):
            if progress:
                progress(len(rows) + j + 1, total)
            try:
                unindexed.append(self.row_from_file(rel))
                report["unindexed"].append(rel)
            except ChunkError as e:
                report["damaged"].append({"key": Path(rel).stem, "path": rel, "error": str(e)})
        if repair:
            for d in report["damaged"]:  # aside first: removing the rows unlinks the files still in place
                if d["path"] is not None:
                    self.disk.quarantine(d["path"])
            with self.catalog.transaction() as c:
                # a bad file no row names drops no row: its name may be a sound chunk's key (a stray copy)
                gone = damaged_rows + report["missing"]
                dropped = Catalog.subtree(c, gone)
                Catalog.delete(c, [r.key for r in dropped if r.key in unnamed])  # no file of theirs to unlink
                self.remove_rows(c, [r for r in dropped if r.key not in unnamed], "corrupt", now)
            for row, params in unindexed:
                self.catalog.add_namespace(row.namespace, row.model, params)
            self.catalog.insert_many(r for r, _ in unindexed)
            report["dead_writers"] = len(self._recover())
            report["repaired"] = True
        report["problems"] = len(report["missing"]) + len(report["damaged"]) + len(report["unindexed"])
        return report
