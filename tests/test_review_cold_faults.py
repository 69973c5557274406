"""Faults a hostile review of cold_read=auto and the Redis tier's URL handling found.

1. cold_read="auto" decided O_DIRECT from the bytes a load reads from disk
   alone. A load whose host hits plus disk reads exceed the host tier evicts
   its own host hits while it keeps the chunks it just read; those hits were
   read with O_DIRECT before, so they are cold on disk again, and the next
   load of the same prompt reads them with O_DIRECT once more: a prompt larger
   than the host tier never warmed the page cache and went to the disk on every
   load (what "auto" exists to avoid).
2. A remote URL the tier refused echoed itself whole in the InputError,
   password included (an upper-case scheme, a space from an env file, a cluster
   node with credentials); credentials in a redis+cluster:// URL were taken for
   part of a host name (the password then showed in the connect warning).
3. URL options redis-py cannot take (an unknown name, a value it cannot parse,
   a port out of range) raised TypeError or a plain ValueError out of the
   store's constructor instead of an InputError.
"""

import logging
import os

import pytest
import torch

import pykvstore as kv
from pykvstore import _C, defaults
import helpers
from helpers import block_table, make_cache, reference, tokens

CHUNK = 32
SECRET = "hunter2-do-not-echo"


@pytest.fixture
def cold_dir(tmp_path):
    """A directory whose files leave the page cache when told to (not tmpfs)."""
    return helpers.cold_dir(tmp_path)


@pytest.fixture
def auto_cold_read():
    before = defaults.get("cold_read")
    defaults.set(cold_read="auto")
    yield
    defaults.set(cold_read=before)


def load(s: kv.KVStore, toks, src, a, n_tokens: int) -> dict:
    dst, b = make_cache("BHTC", seed=2), block_table(20, 24, 2)
    assert s.get(toks[:n_tokens], kv.PagedKV(dst, "BHTC"), b) == n_tokens
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, n_tokens), reference(src, "BHTC", a, 8, 0, n_tokens))
    return dict(s.stats().io)


def test_a_load_larger_than_the_host_tier_warms_the_page_cache_even_when_part_of_it_is_held(
        cold_dir, read_path, auto_cold_read):
    src = make_cache("BHTC", seed=1)
    toks, a = tokens(5 * CHUNK), block_table(20, 24, 1)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 5 * CHUNK
    files = sorted((cold_dir / "bucket" / "data").rglob("*.safetensors"))
    helpers.drop_page_cache(files)
    chunk = kv.PagedKV(src, "BHTC").geometry.chunk_bytes(CHUNK)
    engine = _C.FileEngine(1)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK, host_capacity=3 * chunk + 100) as s:
        first = load(s, toks, src, a, 3 * CHUNK)  # 3 chunks fit the host tier: read around the page cache
        assert first["direct_reads"] + first["direct_fallbacks"] == 3
        # The whole prompt (5 chunks) cannot stay in a host tier of 3: whatever it
        # reads from disk goes through the page cache, so two loads leave every
        # file warm and the third reads none of them around it.
        for _ in range(3):
            io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] == first["direct_reads"], "a load the host tier cannot keep read with O_DIRECT"
        assert not any(engine.is_cold(str(f)) for f in files), "the page cache never warmed: every load hits the disk"


redis = pytest.importorskip("redis")
from pykvstore.tiers.redis import RedisTier  # noqa: E402


@pytest.mark.parametrize("url", [
    f"REDIS://:{SECRET}@127.0.0.1:1/0",  # a scheme in capitals
    f" redis://:{SECRET}@127.0.0.1:1/0",  # a space an env file left
    f"http://user:{SECRET}@127.0.0.1:1/0",
    f"redis+cluster://user:{SECRET}@127.0.0.1:x",  # a cluster node with credentials and a bad port
    f"redis+cluster://:{SECRET}@127.0.0.1:1",  # credentials belong in username=/password=
    [f"user:{SECRET}@127.0.0.1:7000"],
])
def test_a_refused_remote_url_never_shows_its_password(url, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(kv.InputError) as e:
        RedisTier(url, timeout=0.2)
    assert SECRET not in str(e.value) and SECRET not in caplog.text
    assert "***" in str(e.value)  # where the credentials were, so the operator sees which URL it was


@pytest.mark.parametrize("nodes", [[("h", 7000)], [None], [], "redis+cluster://", ["h:-1"], ["h:70000"], [":7000"]])
def test_cluster_nodes_that_are_not_host_port_are_an_input_error(nodes):
    """A node list of tuples or None raised AttributeError; an empty one, a port out of range or
    no host made a tier that rested forever on every use instead of refusing the setting."""
    with pytest.raises(kv.InputError, match="cluster nodes must be host:port"):
        RedisTier(nodes, timeout=0.2)


@pytest.mark.parametrize("url, what", [
    (f"redis://:{SECRET}@127.0.0.1:1/0?foo=1", "foo"),  # redis-py passes unknown names on: a TypeError
    (f"redis://:{SECRET}@127.0.0.1:1/0?socket_timeout=soon", "socket_timeout"),  # a plain ValueError
    (f"redis://:{SECRET}@127.0.0.1:99999/0", "Port"),
    (f"redis://:{SECRET}@[::1/0", "IPv6"),
    (f"unix://:{SECRET}@/nonexistent.sock?db=x", "db"),
])
def test_url_options_redis_py_cannot_take_are_an_input_error(url, what, tmp_path):
    with pytest.raises(kv.InputError, match=what) as e:
        RedisTier(url, timeout=0.2)
    assert SECRET not in str(e.value)
    with pytest.raises(kv.InputError):  # and from the store, with nothing written
        kv.KVStore(tmp_path / "b", model="m", chunk_tokens=CHUNK, remote=url)
    assert not (tmp_path / "b" / "data").exists() or not any((tmp_path / "b" / "data").rglob("*.safetensors"))


def test_fsck_reports_and_repairs_a_row_whose_namespace_is_no_digest(tmp_path):
    """A catalog row whose namespace (or key) is no hex digest, here 'hex\\n' (what 60560b6's
    fullmatch now refuses): no path can be derived for it, and fsck, fsck --repair and every
    get of its prompt raised UnsafePath ('pykvstore fsck' exit 1), so the repair tool could
    not repair it. It is reported damaged; repair drops it and its tail, and the sound file
    it stood for is indexed again from its header."""
    src = make_cache("BHTC", seed=1)
    toks = tokens(3 * CHUNK)
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=CHUNK) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), block_table(12, 24, 1)) == 3 * CHUNK
    with kv.Bucket(tmp_path / "b") as b:
        with b.catalog.transaction() as c:
            c.execute("UPDATE chunks SET namespace = namespace || char(10) WHERE chunk_index = 1")
        bad = b.catalog.rows("chunk_index = 1")[0]
        r = b.fsck()
        assert [(d["key"], d["path"]) for d in r["damaged"] if d["key"] == bad.key] == [(bad.key, None)]
        assert "hex digest" in r["damaged"][0]["error"] and not r["repaired"] and r["problems"] >= 1
        r = b.fsck(repair=True)
        assert r["repaired"]
        assert b.fsck()["problems"] == 0
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=CHUNK) as s:
        assert s.lookup(toks) == 2 * CHUNK  # chunk 1 indexed again from its file; chunk 2 went with the bad row
        dst, b_ids = make_cache("BHTC", seed=2), block_table(12, 24, 2)
        assert s.get(toks, kv.PagedKV(dst, "BHTC"), b_ids) == 2 * CHUNK
        assert torch.equal(reference(dst, "BHTC", b_ids, 8, 0, 2 * CHUNK),
                           reference(src, "BHTC", block_table(12, 24, 1), 8, 0, 2 * CHUNK))


def test_a_fifo_or_directory_at_a_chunk_path_is_no_o_direct_fallback(tmp_path):
    """An O_DIRECT read (a cold file under cold_read=auto/direct, or direct_read) of a FIFO or a
    directory put where a chunk file was fails as "not a regular file" (EINVAL): it counted a
    direct_fallback, the counter that says a file system refused O_DIRECT, though none did."""
    engine = _C.FileEngine(1)
    fifo, folder = tmp_path / "fifo.safetensors", tmp_path / "dir.safetensors"
    os.mkfifo(fifo)
    folder.mkdir()
    for path in (fifo, folder):
        with pytest.raises(OSError, match="not a regular file"):
            engine.read(str(path), 1, 1 << 20, True).result()
    c = engine.counters()
    assert c["errors"] == 2 and c["direct_fallbacks"] == 0 and c["direct_reads"] + c["buffered_reads"] == 0


@pytest.mark.parametrize("name", ["0a1b (copy).safetensors", "x\ny.safetensors", "ünï.safetensors"])
def test_fsck_repair_sets_aside_a_stray_file_whatever_its_name(tmp_path, name):
    """A file an operator left under data/ ('<key> (copy).safetensors' from a file manager,
    a name with a newline or non-ASCII letters): fsck reports it damaged, and --repair said
    "repaired" but could neither move it to quarantine nor remove it (scan paths were held to
    [A-Za-z0-9._-] names), so every later fsck found it again. It goes to quarantine now, and
    nothing outside data/ is reachable through such a name."""
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=CHUNK) as s:
        assert s.put(tokens(2 * CHUNK), kv.PagedKV(make_cache("BHTC", seed=1), "BHTC"), block_table(8, 24, 1)) == 64
    model_dir = next((tmp_path / "b" / "data").iterdir())
    (model_dir / name).write_bytes(b"not a chunk")
    with kv.Bucket(tmp_path / "b") as b:
        r = b.fsck()
        assert [d["path"] for d in r["damaged"]] == [f"data/{model_dir.name}/{name}"]
        assert b.fsck(repair=True)["repaired"]
        after = b.fsck()
        assert after["problems"] == 0, after
    assert not (model_dir / name).exists()
    assert [p.name.split(".", 1)[1] for p in (tmp_path / "b" / "quarantine").iterdir()] == [name]


def test_fsck_refuses_a_chunk_file_far_larger_than_its_row_without_reading_it(tmp_path):
    """fsck read each row's file whole with a 1 TiB limit: a chunk file replaced by a large sparse
    file raised MemoryError (std::bad_alloc) out of fsck and 'pykvstore fsck' (a traceback), and
    one that fits in memory was read into it whole (gigabytes of zeros on a serving host).
    A file larger than get would ever read for its row is damaged, like one that is too short."""
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=CHUNK) as s:
        assert s.put(tokens(2 * CHUNK), kv.PagedKV(make_cache("BHTC", seed=1), "BHTC"), block_table(8, 24, 1)) == 64
    with kv.Bucket(tmp_path / "b") as b:
        row = b.catalog.rows("chunk_index = 1")[0]
        os.truncate(tmp_path / "b" / row.path, 1 << 40)  # sparse: no disk space, no memory unless read
        r = b.fsck()
        assert [d["key"] for d in r["damaged"]] == [row.key] and "larger" in r["damaged"][0]["error"]
        assert b.fsck(repair=True)["repaired"] and b.fsck()["problems"] == 0
    for f in (tmp_path / "b" / "quarantine").iterdir():
        f.unlink()
