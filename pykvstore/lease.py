"""Writer liveness the kernel vouches for: one locked lease file per writer.

A writer's catalog rows in state `writing` and its temp files name its lease
("lease:<id>"). The writer creates <root>/leases/<id>.lease and holds an
exclusive flock on it for as long as it lives; the kernel drops the lock when
the last descriptor of it closes, however the process ends (SIGKILL
included). Recovery reclaims a writer's leftovers only after taking that lock
itself, so a writer that is alive (in this or any other pid namespace or
container on the same kernel, whatever its hostname or pid) is never
reclaimed, and a dead one always can be.

host:pid owners written by older versions are still judged the old way (same
host name and no such pid), which is all they allow.

Which thread: the lease is taken when a store or bucket opens and released at
close; `reclaimable` runs on whichever thread runs recovery (open, gc, fsck).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Optional

PREFIX = "lease:"
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
HOST = socket.gethostname()


def _lease_path(root: Path, lease_id: str) -> Path:
    return root / "leases" / f"{lease_id}.lease"


class Lease:
    """This process's lease on a bucket: created and locked at once, held until release()."""

    def __init__(self, root: Path) -> None:
        d = root / "leases"
        if d.is_symlink():
            raise OSError(errno.ELOOP, "leases/ is a symbolic link: nothing inside a bucket is followed", str(d))
        d.mkdir(exist_ok=True)
        self.id = secrets.token_hex(12)
        self.path = _lease_path(root, self.id)
        # Locked under a temp name, then renamed: a sweep never sees an unlocked lease of a live writer.
        tmp = d / f".{self.id}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd: Optional[int] = os.open(tmp, flags, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._fd, f"{HOST} {os.getpid()}\n".encode())  # for people reading the directory
            os.rename(tmp, self.path)
        except BaseException:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise

    @property
    def owner(self) -> str:
        """What catalog rows record as their writer."""
        return PREFIX + self.id

    @property
    def tmp_prefix(self) -> str:
        """How this writer's temp file names start."""
        return f"@{self.id}"

    def release(self) -> None:
        """Removes the lease file, then lets go of the lock (the order keeps recovery from taking a live one)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def pid_alive(pid: int) -> bool:
    """Whether this pid names a live process in this pid namespace (only meaningful for this host's own rows)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Reclaimer:
    """Decides, and holds the proof, that writers are dead while their leftovers are removed.

    Use as a context manager: locks taken by `dead()` are kept until exit, so
    a lease cannot be re-used while its rows and files are being reclaimed;
    at exit the dead leases' files are removed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: dict[str, Optional[int]] = {}  # lease id -> fd holding its lock (None: file gone)

    def __enter__(self) -> "Reclaimer":
        return self

    def __exit__(self, *exc) -> None:
        for lease_id, fd in self._held.items():
            if fd is not None:
                try:
                    _lease_path(self.root, lease_id).unlink(missing_ok=True)
                finally:
                    os.close(fd)
        self._held.clear()

    def dead(self, owner: Optional[str]) -> bool:
        """Whether the writer named `owner` is provably dead (its lease lock taken here)."""
        if not owner:
            return False
        if owner.startswith(PREFIX):
            lease_id = owner[len(PREFIX):]
            if not _ID.match(lease_id):
                return False  # not a name we write: leave it to a person (fsck shows it)
            if lease_id in self._held:
                return True
            try:
                fd = os.open(_lease_path(self.root, lease_id), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                self._held[lease_id] = None  # released (or reclaimed): its owner is gone
                return True
            except OSError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False  # held: alive, wherever it runs
            self._held[lease_id] = fd
            return True
        host, _, pid = owner.rpartition(":")  # an older version's host:pid
        return host == HOST and pid.isdigit() and not pid_alive(int(pid))

    def sweep(self) -> int:
        """Marks every lease file whose lock is free for removal at exit (writers that died
        with nothing in flight leave only that file); returns how many."""
        try:
            names = os.listdir(self.root / "leases")
        except FileNotFoundError:
            return 0
        freed = 0
        for name in names:
            if name.endswith(".lease") and self.dead(PREFIX + name[: -len(".lease")]):
                freed += 1
        return freed

    def dead_tmp(self, name: str) -> bool:
        """Whether a temp file name ("@<lease id>.<n>.<name>" or an older "<host>.<pid>.<n>.<name>") is a dead writer's."""
        first, _, rest = name.partition(".")
        if first.startswith("@"):  # "@" is in no host name
            return self.dead(PREFIX + first[1:])
        pid = rest.partition(".")[0]
        return first == HOST and pid.isdigit() and not pid_alive(int(pid))
