"""Error paths of the lease, the path rules, the host tier, the disk tier's scan helpers
and the Redis value signer, each met for real: a linked leases/ directory, a file size
limit that fails the lease's write, a second process holding a lease, an unprivileged
process probing a pid, FIFOs, links and files where directories belong, a cleaner
racing another.

Each test checks the documented outcome (an UnsafePath or OSError naming the
problem, nothing created or removed behind a link, a miss, LRU order kept).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import pykvstore as kv
from pykvstore import lease as lease_mod
from pykvstore.errors import InputError
from pykvstore.lease import HOST, PREFIX, Lease, Reclaimer, pid_alive
from pykvstore.tiers import redis_values
from pykvstore.tiers.host import HostTier
from pykvstore.tiers.safe_paths import UnsafePath, check_chunk_rel, check_digest, open_dir, open_regular

LEASE_PY = lease_mod.__file__
NS, KEY = "cd" * 16, "ab12" + "ef" * 14
REL = f"data/m/{NS}/ab/12/{KEY}.safetensors"

# lease.py loaded on its own (stdlib only): a second process up in a blink, without torch
_LOAD_LEASE = ("import importlib.util, sys\n"
               "spec = importlib.util.spec_from_file_location('pykvstore.lease', sys.argv[1])\n"
               "lease = importlib.util.module_from_spec(spec); spec.loader.exec_module(lease)\n")


def run_py(code: str, *args: str, python: str = sys.executable, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", _LOAD_LEASE + code, LEASE_PY, *args], capture_output=True,
                          text=True, timeout=60, **kw)


# --- lease.py ------------------------------------------------------------------------------------
def test_a_linked_leases_directory_is_refused_and_nothing_is_made_behind_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "bucket"
    root.mkdir()
    (root / "leases").symlink_to(elsewhere)
    with pytest.raises(OSError, match="leases/ is a symbolic link") as e:
        Lease(root)
    assert e.value.errno == errno.ELOOP
    assert list(elsewhere.iterdir()) == []


def test_a_lease_whose_write_fails_leaves_no_temp_file(tmp_path):
    # A real fault: a file size limit of 0 bytes (RLIMIT_FSIZE) fails the lease's first write with EFBIG.
    r = run_py("import resource, signal\nfrom pathlib import Path\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "before = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (0, before[1]))\n"
               "try:\n    lease.Lease(Path(sys.argv[2]))\nexcept OSError as e:\n    print('errno', e.errno)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, before)\n",  # (so a coverage run can write its data)
               str(tmp_path))
    assert r.stdout.split() == ["errno", str(errno.EFBIG)], r.stderr
    assert os.listdir(tmp_path / "leases") == []  # the locked temp file was removed again


def test_release_twice_is_harmless_and_the_file_is_gone(tmp_path):
    held = Lease(tmp_path)
    assert held.path.exists()
    held.release()
    assert not held.path.exists()
    held.release()  # idempotent: close() paths may call it again


@pytest.mark.parametrize("owner", [None, "", "lease:short", "lease:../../etc/passwd", "lease:" + "x" * 65])
def test_an_owner_name_we_never_write_is_not_judged_dead(tmp_path, owner):
    (tmp_path / "leases").mkdir()
    with Reclaimer(tmp_path) as r:
        assert r.dead(owner) is False


def test_a_missing_lease_file_means_its_writer_is_gone(tmp_path):
    (tmp_path / "leases").mkdir()
    with Reclaimer(tmp_path) as r:
        assert r.dead(PREFIX + "a" * 24) is True
        assert r.dead(PREFIX + "a" * 24) is True  # remembered, not opened again


def test_a_lease_file_replaced_by_a_link_is_no_proof_of_death(tmp_path):
    # A planted link is never followed (O_NOFOLLOW): its target is neither locked nor removed.
    (tmp_path / "leases").mkdir()
    target = tmp_path / "target"
    target.write_text("precious")
    lease_id = "b" * 24
    (tmp_path / "leases" / f"{lease_id}.lease").symlink_to(target)
    with Reclaimer(tmp_path) as r:
        assert r.dead(PREFIX + lease_id) is False
    assert target.read_text() == "precious" and (tmp_path / "leases" / f"{lease_id}.lease").is_symlink()


def test_a_lease_held_by_another_process_is_alive_until_that_process_is_killed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _LOAD_LEASE + "from pathlib import Path\nimport time\n"
                          "l = lease.Lease(Path(sys.argv[2])); print(l.owner, flush=True); time.sleep(600)",
                          LEASE_PY, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        owner = p.stdout.readline().strip()
        assert owner.startswith(PREFIX)
        with Reclaimer(tmp_path) as r:
            assert r.dead(owner) is False and r.sweep() == 0
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        with Reclaimer(tmp_path) as r:
            assert r.dead(owner) is True
            assert r.sweep() == 1
        assert os.listdir(tmp_path / "leases") == []  # the dead lease's file went at exit
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        p.stdout.close()


def test_old_host_pid_owners_are_judged_by_the_pid(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(done.stdout)
    with Reclaimer(tmp_path) as r:
        assert r.dead(f"{HOST}:{os.getpid()}") is False  # this process: alive
        assert r.dead(f"{HOST}:{gone}") is True or pid_alive(gone)  # reused pids stay alive, rightly
        assert r.dead(f"another-host-{HOST}:{gone}") is False  # another host's pid says nothing here
        assert r.dead_tmp(f"{HOST}.{os.getpid()}.1.x.safetensors") is False
    (tmp_path / "leases").mkdir(exist_ok=True)
    with Reclaimer(tmp_path) as r:  # this version's temp names carry the lease id
        assert r.dead_tmp(f"@{'e' * 24}.1.x.safetensors") is True  # no such lease: its writer is gone
        assert r.dead_tmp("@../../x.1.x.safetensors") is False  # not a name we write


SYSTEM_PYTHON = "/usr/bin/python3"  # the probe runs as nobody, who may not run the venv's interpreter


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root and a system python to run a probe as another user")
def test_a_pid_this_user_may_not_signal_is_alive():
    # As an unprivileged user, kill(pid, 0) on root's process is EPERM: the process exists.
    r = run_py("print(lease.pid_alive(int(sys.argv[2])))", str(os.getpid()), python=SYSTEM_PYTHON, user=65534,
               cwd="/")
    assert r.stdout.strip() == "True", r.stderr


# --- safe_paths.py --------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", [None, 7, "", "../etc/passwd", REL + "\n", f"data/../{NS}/ab/12/{KEY}.safetensors",
                                 f"data/./{NS}/ab/12/{KEY}.safetensors", f"data/m/{NS}/ab/12/{KEY}.safetensors/x"])
def test_a_path_outside_the_layout_is_refused(rel):
    with pytest.raises(UnsafePath, match="not a chunk path inside the bucket") as e:
        check_chunk_rel(rel)
    assert e.value.errno == errno.EINVAL


def test_a_chunk_path_whose_directories_do_not_match_its_key_is_refused():
    assert check_chunk_rel(REL) == REL
    with pytest.raises(UnsafePath, match="does not match its key"):
        check_chunk_rel(f"data/m/{NS}/ab/13/{KEY}.safetensors")
    with pytest.raises(UnsafePath, match="does not match its key"):
        check_chunk_rel(f"data/m/{NS}/ac/12/{KEY}.safetensors")


@pytest.mark.parametrize("value", [None, 5, "xyz", "AB" * 16, "ab" * 15, "ab" * 16 + "\n"])
def test_a_digest_that_is_not_lower_hex_of_128_or_256_bits_is_refused(value):
    with pytest.raises(UnsafePath, match="chunk key is not a hex digest"):
        check_digest(value, "chunk key")


def test_open_dir_walks_plain_directories_only(tmp_path):
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for bad in ("a//b", "a/./b", "a/../b", ".", ""):
            with pytest.raises(UnsafePath, match="not a plain relative directory"):
                open_dir(root, bad, create=True)
        assert not (tmp_path / "a").exists()  # refused before anything was made
        with pytest.raises(FileNotFoundError):
            open_dir(root, "a/b")
        os.close(open_dir(root, "a/b", create=True))
        assert (tmp_path / "a" / "b").is_dir()
        (tmp_path / "a" / "file").write_text("x")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "a" / "link").symlink_to(tmp_path / "elsewhere")
        for bad in ("a/file", "a/file/c", "a/link", "a/link/c"):
            with pytest.raises(UnsafePath, match="links are not followed") as e:
                open_dir(root, bad, create=True)
            assert e.value.errno == errno.ELOOP
        assert list((tmp_path / "elsewhere").iterdir()) == []
    finally:
        os.close(root)


def test_writers_racing_to_make_the_same_directories_all_get_them(tmp_path):
    # Real threads on a real directory: each finds a level missing, another makes it first
    # (mkdir's EEXIST), and every one of them must still get that directory.
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    errors: list[BaseException] = []

    def make(rel: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            fd = open_dir(root, rel, create=True)
            try:
                assert os.fstat(fd).st_ino == os.stat(tmp_path / rel).st_ino
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        for i in range(300):
            barrier = threading.Barrier(4)
            threads = [threading.Thread(target=make, args=(f"r{i}/a/b/c", barrier)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        os.close(root)
    assert errors == []
    assert len(list(tmp_path.glob("r*/a/b/c"))) == 300


def test_a_file_removed_while_it_is_opened_is_missing_never_unsafe(tmp_path):
    # Another thread writes and removes the file over and over (an eviction racing a read): some
    # opens land between open() and the /proc check, on a file already unlinked (" (deleted)").
    # That is a missing chunk (FileNotFoundError), never a path through a link (UnsafePath).
    path = str(tmp_path / "c.safetensors")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with open(path, "wb") as f:
                f.write(b"x")
            os.unlink(path)

    t = threading.Thread(target=churn)
    t.start()
    opened = missing = 0
    try:
        for _ in range(40000):
            try:
                os.close(open_regular(path))
                opened += 1
            except FileNotFoundError:
                missing += 1
    finally:
        stop.set()
        t.join()
    assert opened > 0 and missing > 0  # both sides of the race were met


def test_open_regular_refuses_what_is_not_a_plain_file_reached_directly(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular(str(tmp_path / "missing"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePath, match="not a regular file"):
        open_regular(str(tmp_path / "fifo"))  # O_NONBLOCK: no writer, and still no hang
    (tmp_path / "dir").mkdir()
    with pytest.raises(UnsafePath, match="not a regular file"):
        open_regular(str(tmp_path / "dir"))
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"payload")
    (tmp_path / "via").symlink_to(tmp_path / "real")  # a link in the middle: O_NOFOLLOW alone misses it
    with pytest.raises(UnsafePath, match="reached through a symbolic link"):
        open_regular(str(tmp_path / "via" / "f"))
    (tmp_path / "last").symlink_to(tmp_path / "real" / "f")
    with pytest.raises(UnsafePath, match="a symbolic link") as e:
        open_regular(str(tmp_path / "last"))
    assert e.value.errno == errno.ELOOP
    fd = open_regular(str(tmp_path / "real" / "f"))
    try:
        assert os.read(fd, 100) == b"payload"
    finally:
        os.close(fd)


# --- the disk tier's scan helpers -------------------------------------------------------------------
def test_quarantine_and_read_head_refuse_a_path_outside_the_layout(store, caplog, tmp_path):
    disk = store.bucket.disk
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"keep me")
    rel = os.path.relpath(victim, disk.base)  # "../victim.safetensors": outside the bucket
    with pytest.raises(UnsafePath, match="not a chunk path"):
        disk.read_head(rel)
    disk.quarantine(rel)  # refused, logged, and nothing outside the bucket is moved or removed
    assert victim.read_bytes() == b"keep me"
    assert os.listdir(disk.quarantine_dir) == []
    assert "could not move" in caplog.text
    # inside the bucket but not a chunk path: neither read nor moved aside, whatever its name
    (disk.tmp / "other.safetensors").write_bytes(b"another writer's temp file")
    with pytest.raises(UnsafePath, match="not a chunk path"):
        disk.read_head("tmp/other.safetensors")
    disk.quarantine("tmp/other.safetensors")
    assert (disk.tmp / "other.safetensors").read_bytes() == b"another writer's temp file"
    assert os.listdir(disk.quarantine_dir) == []


def test_quarantining_a_file_already_gone_is_quiet(store, caplog):
    store.bucket.disk.quarantine(REL)  # another process set it aside (or evicted it) first
    assert "could not move" not in caplog.text and os.listdir(store.bucket.disk.quarantine_dir) == []


def test_a_temp_file_another_cleaner_removed_first_is_not_an_error(store):
    disk = store.bucket.disk
    for i in range(3):
        (disk.tmp / f"@{'c' * 24}.{i}.x.safetensors").write_bytes(b"half written")

    def dead_and_removed_by_a_racing_recovery(name: str) -> bool:
        os.unlink(disk.tmp / name)  # the other recovery wins the race for this file
        return True

    assert disk.clean_tmp(dead_and_removed_by_a_racing_recovery) == 0
    assert os.listdir(disk.tmp) == []


# --- the host tier -----------------------------------------------------------------------------------
def _chunk(n: int, fill: int) -> torch.Tensor:
    return torch.full((n,), fill, dtype=torch.uint8)


def test_the_host_tier_evicts_least_recently_used_first_within_capacity():
    h = HostTier(300)
    h.put("a", _chunk(100, 1))
    h.put("b", _chunk(100, 2))
    h.put("c", _chunk(100, 3))
    assert h.used == 300 and len(h) == 3 and "a" in h
    h.put("a", _chunk(100, 9))  # already held: refreshed, not stored twice, bytes unchanged
    assert h.used == 300 and len(h) == 3
    h.put("d", _chunk(150, 4))  # needs 150: b then c go (a was used last)
    assert "b" not in h and "c" not in h and "a" in h and "d" in h
    assert h.get("a")[0] == 1  # the first copy kept
    assert h.used == 250
    h.put("huge", _chunk(301, 5))  # larger than the tier: never kept, nothing evicted for it
    assert "huge" not in h and h.used == 250 and len(h) == 2
    h.discard("a")
    h.discard("a")
    assert h.used == 150
    h.clear()
    assert h.used == 0 and len(h) == 0 and h.get("d") is None


# --- the Redis value signer --------------------------------------------------------------------------
def test_a_signed_value_too_short_to_hold_a_tag_is_refused():
    s = redis_values.make_signer("s" * 32)
    good = b"v" * 10 + s.tag("k", b"v" * 10)
    assert bytes(s.verify("k", good)) == b"v" * 10
    assert s.verify("k", good[-redis_values.TAG_BYTES:]) is None  # only a tag: no value
    assert s.verify("k", b"") is None
    assert s.verify("k", s.tag("k", b"")) is None  # a correctly signed empty value is still no chunk
    assert s.verify("other", good) is None


@pytest.mark.parametrize("secret", [12345, ["a" * 32], 1.5])
def test_a_secret_that_is_not_text_or_bytes_is_an_input_error(secret):
    with pytest.raises(InputError, match="secret must be str or bytes"):
        redis_values.make_signer(secret)
