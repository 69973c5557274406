"""Paths inside a bucket: derived, checked, and never followed through a link.

The rule (one for every operation): a bucket's root may itself be reached
through a symbolic link (it is resolved once, at open), but inside it nothing
is followed. A link, FIFO, device or directory where a chunk file or one of
its directories should be is refused with a clear error: reads treat it as a
damaged chunk (a miss, set aside), scans report it, deletes and renames never
go through it. Every chunk path is checked against the one layout
data/<model-slug>/<namespace>/<k0k1>/<k2k3>/<key>.safetensors before it is
touched, so a path from anywhere else (a catalog row, a header) cannot name a
file outside the bucket.

Deletes and renames walk directory by directory with O_NOFOLLOW from a
descriptor of the root (no window in which a directory can be swapped for a
link); reads are checked by the native engine on the file it actually opened
(O_NOFOLLOW, fstat, and /proc/self/fd). Any thread may call these.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Optional

_CHUNK_REL = re.compile(r"^data/([A-Za-z0-9._-]{1,120})/([0-9a-f]{32}|[0-9a-f]{64})/([0-9a-f]{2})/([0-9a-f]{2})/"
                        r"([0-9a-f]{32}|[0-9a-f]{64})\.safetensors$")
_HEX = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path that is not a chunk path of this bucket, or that goes through a link."""


def check_chunk_rel(rel: str) -> str:
    """`rel` if it is a well-formed chunk path under data/; UnsafePath otherwise."""
    m = _CHUNK_REL.fullmatch(rel) if isinstance(rel, str) else None  # fullmatch: "$" lets a final "\n" through
    if m is None or m.group(1) in (".", ".."):
        raise UnsafePath(errno.EINVAL, "not a chunk path inside the bucket", str(rel)[:200])
    k0, k1, key = m.group(3), m.group(4), m.group(5)
    if key[:2] != k0 or key[2:4] != k1:
        raise UnsafePath(errno.EINVAL, "chunk path does not match its key", rel)
    return rel


def check_digest(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise UnsafePath(errno.EINVAL, f"{what} is not a hex digest", str(value)[:80])
    return value


def open_dir(root_fd: int, rel_dir: str, create: bool = False) -> int:
    """A descriptor of directory `rel_dir` under the root, walked without following links.

    create: make missing directories on the way (mode 0o755). Raises
    UnsafePath (ELOOP) where a component is a link, FileNotFoundError where
    one is missing and not created.
    """
    parts = rel_dir.split("/")
    if any(part in ("", ".", "..") for part in parts):  # refused before any directory is made
        raise UnsafePath(errno.EINVAL, "not a plain relative directory", rel_dir)
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:  # made only when missing: the common case costs one open per level
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(errno.ELOOP, "a symbolic link or a file where a directory should be: "
                                     "links are not followed inside a bucket", rel_dir) from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str) -> int:
    """Opens a file for reading only if it is a regular file reached without links (see module doc)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(errno.ELOOP, "a symbolic link: links are not followed inside a bucket", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(errno.EINVAL, "not a regular file", path)
        real = _fd_path(fd)
        if real is not None and real != path:
            if real.endswith(" (deleted)"):
                raise FileNotFoundError(errno.ENOENT, "removed while opening", path)
            raise UnsafePath(errno.ELOOP, "reached through a symbolic link: links are not followed inside a bucket",
                             path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _fd_path(fd: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the O_NOFOLLOW and fstat checks still hold
        return None
