"""Which read a chunk file mostly out of the page cache gets (defaults' cold_read).

"auto" (the default) reads it with O_DIRECT when the host tier keeps all that
the load reads from disk, so the next load is a memory hit, and through the
page cache otherwise (no host tier, or a load larger than it: the page cache is
then the only cache the next load can hit). "direct" always goes around the
page cache, "cache" never. The engine's counters (stats().io) say which read ran.
"""

import pathlib

import pytest
import torch

import pykvstore as kv
from pykvstore import _C, defaults
import helpers
from helpers import SPREAD, block_table, make_cache, reference, resident, tokens

CHUNK = 32


@pytest.fixture
def cold_dir(tmp_path):
    """A directory whose files leave the page cache when told to (not tmpfs)."""
    return helpers.cold_dir(tmp_path)


@pytest.fixture
def cold_read():
    """Sets defaults' cold_read for the stores a test opens; restores it after."""
    before = defaults.get("cold_read")
    yield lambda mode: defaults.set(cold_read=mode)
    defaults.set(cold_read=before)


def stored(d: pathlib.Path):
    """A bucket of 5 chunks whose files are out of the page cache: (tokens, source cache, its block ids, files)."""
    src = make_cache("BHTC", seed=1)
    toks, a = tokens(5 * CHUNK), block_table(20, 24, 1)
    with kv.KVStore(d / "bucket", model="m", chunk_tokens=CHUNK) as s:
        assert s.put(toks, kv.PagedKV(src, "BHTC"), a) == 5 * CHUNK
    files = sorted((d / "bucket" / "data").rglob("*.safetensors"))
    assert len(files) == 5
    helpers.drop_page_cache(files)
    return toks, src, a, files


def cold(files) -> list[bool]:
    engine = _C.FileEngine(1)
    return [engine.is_cold(str(f)) for f in files]


def page_cache_reads(io: dict) -> int:
    return io["mapped_reads"] + io["buffered_reads"]


def load(s: kv.KVStore, toks, src, a, n_tokens: int) -> dict:
    """Loads the first n_tokens into a fresh cache, checks the bytes; the engine's counters after."""
    dst, b = make_cache("BHTC", seed=2), block_table(20, 24, 2)
    assert s.get(toks[:n_tokens], kv.PagedKV(dst, "BHTC"), b) == n_tokens
    assert torch.equal(reference(dst, "BHTC", b, 8, 0, n_tokens), reference(src, "BHTC", a, 8, 0, n_tokens))
    return dict(s.stats().io)


def test_auto_is_the_default_and_the_setting_is_checked(monkeypatch):
    saved = defaults._values.pop("cold_read", None)
    try:
        monkeypatch.delenv("PYKVSTORE_COLD_READ", raising=False)
        assert defaults.get("cold_read") == "auto"
        for raw, want in (("Direct", "direct"), ("CACHE", "cache"), ("auto", "auto")):
            defaults._values.pop("cold_read")
            monkeypatch.setenv("PYKVSTORE_COLD_READ", raw)
            assert defaults.get("cold_read") == want
        defaults._values.pop("cold_read")
        monkeypatch.setenv("PYKVSTORE_COLD_READ", "fast")
        with pytest.raises(kv.InputError, match=r"PYKVSTORE_COLD_READ='fast'.*auto/direct/cache"):
            defaults.get("cold_read")
        assert issubclass(kv.InputError, ValueError)
        defaults.set(cold_read=" Cache ")
        assert defaults.get("cold_read") == "cache"
        for bad in ("fast", "", True, None, 1):
            with pytest.raises(kv.InputError, match="cold_read must be one of auto/direct/cache"):
                defaults.set(cold_read=bad)
        assert defaults.get("cold_read") == "cache"  # a refused value changes nothing
    finally:
        defaults._values.pop("cold_read", None)
        if saved is not None:
            defaults._values["cold_read"] = saved


def test_auto_reads_cold_files_direct_into_the_host_tier_and_warm_ones_from_the_page_cache(cold_dir, read_path,
                                                                                           cold_read):
    cold_read("auto")
    toks, src, a, files = stored(cold_dir)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:  # a 1 GiB host tier
        io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] + io["direct_fallbacks"] == 5 and page_cache_reads(io) - io["direct_fallbacks"] == 0
        assert all(cold(files))  # around the page cache: the files stay out of it...
        io2 = load(s, toks, src, a, 5 * CHUNK)
        assert s.stats().host_hits == 5 and io2["bytes_read"] == io["bytes_read"]  # ...the host tier serves them
    for f in files:  # into the page cache: a warm file is read from it, whatever its size
        f.read_bytes()
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:
        io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] == 0 and io["mapped_reads" if read_path == "auto" else "buffered_reads"] == 5


def test_auto_reads_through_the_page_cache_what_the_host_tier_cannot_keep(cold_dir, read_path, cold_read):
    cold_read("auto")
    toks, src, a, files = stored(cold_dir)
    chunk = kv.PagedKV(src, "BHTC").geometry.chunk_bytes(CHUNK)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK, host_capacity=1) as s:  # no host tier
        io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] == 0 and page_cache_reads(io) == 5
        assert not any(cold(files))  # the page cache holds them for the next load
    helpers.drop_page_cache(files)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK, host_capacity=3 * chunk + 100) as s:
        io = load(s, toks, src, a, 5 * CHUNK)  # 5 chunks into a host tier of 3
        assert io["direct_reads"] == 0 and page_cache_reads(io) == 5
    helpers.drop_page_cache(files)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK, host_capacity=3 * chunk + 100) as s:
        io = load(s, toks, src, a, 3 * CHUNK)  # 3 fit: direct, kept
        assert io["direct_reads"] + io["direct_fallbacks"] == 3 and page_cache_reads(io) - io["direct_fallbacks"] == 0
        io2 = load(s, toks, src, a, 5 * CHUNK)  # 3 host hits and 2 from disk: 5 chunks do not fit a host tier of 3
        assert s.stats().host_hits == 3  # (the 2 it keeps evict 2 hits, cold on disk: the page cache is their cache)
        assert io2["direct_reads"] + io2["direct_fallbacks"] == io["direct_reads"] + io["direct_fallbacks"]
        assert page_cache_reads(io2) - page_cache_reads(io) == 2


def test_cache_never_and_direct_always_go_around_the_page_cache(cold_dir, read_path, cold_read):
    toks, src, a, files = stored(cold_dir)
    cold_read("cache")
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:  # the host tier could keep it all
        io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] == 0 and page_cache_reads(io) == 5
    helpers.drop_page_cache(files)
    cold_read("direct")
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK, host_capacity=1) as s:  # no host tier
        io = load(s, toks, src, a, 5 * CHUNK)
        assert io["direct_reads"] + io["direct_fallbacks"] == 5 and page_cache_reads(io) - io["direct_fallbacks"] == 0
        assert all(cold(files))


@pytest.fixture
def prefault_mode():
    before = defaults.get("prefault")
    yield lambda mode: defaults.set(prefault=mode)
    defaults.set(prefault=before)


def test_a_store_over_stored_chunks_faults_in_the_pool_pages_a_load_of_them_writes(cold_dir, prefault_mode):
    """At open, a thread populates the pool's first pages, as many as the model's chunks
    take (a cold load writes them into pool buffers); the rest of the pool stays untouched."""
    prefault_mode("auto")
    with kv.KVStore(cold_dir / "empty", model="m", chunk_tokens=CHUNK) as s:
        assert s._gets.prefault is None  # nothing stored: nothing to load
    toks, src, a, files = stored(cold_dir)
    stored_bytes = sum(kv.PagedKV(src, "BHTC").geometry.chunk_bytes(CHUNK) for _ in files)
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:
        t = s._gets.prefault
        assert t is not None
        t.join(30)
        pool = s._pool
        assert stored_bytes <= t.nbytes == t.done < stored_bytes + len(files) * 8192 + 4096
        assert all(resident(pool.base, t.nbytes * SPREAD))
        beyond = -(-t.nbytes * SPREAD // (2 << 20)) * (2 << 20)  # past the huge page the last one may sit in
        assert not any(resident(pool.base + beyond, 2 << 20))
        io = load(s, toks, src, a, 5 * CHUNK)  # and the load is what it was
        assert io["direct_reads"] + io["direct_fallbacks"] == 5
    assert pool.prefault(4096) == 0  # closed: its prefault stops, and a later one does nothing
    prefault_mode("off")
    with kv.KVStore(cold_dir / "bucket", model="m", chunk_tokens=CHUNK) as s:
        assert s._gets.prefault is None and not any(resident(s._pool.base, 2 << 20))
    with pytest.raises(kv.InputError, match="prefault must be off or auto"):
        defaults.set(prefault="on")


def _ahead_thread(pool):
    """The pool's prefault thread, if one runs (keep_ahead starts it from the put's staging)."""
    from pykvstore.store import prefault

    return prefault._running.get(pool.base)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_puts_keep_pool_pages_faulted_in_ahead_of_their_staging(cold_dir, prefault_mode, mode):
    """put_async stages in the engine's step into fresh pool memory (its chunks stay in the host
    tier), so with prefault auto a thread keeps AHEAD bytes past what is allocated faulted in: the
    next stagings never take a first touch on the engine's thread. Off: nothing beyond use is."""
    from pykvstore.store import prefault

    prefault_mode(mode)
    src, a = make_cache("BHTC", seed=1), block_table(20, 24, 1)
    toks = tokens(20 * 8, seed=5)
    with kv.KVStore(cold_dir / "fresh", model="m", chunk_tokens=CHUNK) as s:
        pool = s._pool
        assert s._gets.prefault is None  # an empty bucket: nothing faulted in at open
        assert s.put_async(toks, kv.PagedKV(src, "BHTC"), a).wait() == len(toks)
        t = _ahead_thread(pool)
        if t is not None:
            t.join(30)
        stats = pool.stats()
        used = stats["capacity"] - stats["free_bytes"]
        start = -(-used * SPREAD // (2 << 20)) * (2 << 20)  # past the huge page the last buffer sits in
        ahead = resident(pool.base + start, prefault.AHEAD // 2 * SPREAD)
        if mode == "auto":
            assert all(ahead), f"{sum(ahead)} of {len(ahead)} pages ahead of use faulted in"
        else:
            assert t is None and not any(ahead)


def test_warm_up_faults_in_the_first_pages_before_any_put(cold_dir, prefault_mode):
    """What the vLLM worker calls at start-up: the pages its first requests stage into are faulted in
    before they arrive, on the prefault thread; with prefault off it does nothing."""
    from pykvstore.store import prefault

    for mode in ("auto", "off"):
        prefault_mode(mode)
        with kv.KVStore(cold_dir / mode, model="m", chunk_tokens=CHUNK) as s:
            s.warm_up()
            t = _ahead_thread(s._pool)
            if t is not None:
                t.join(30)
            first = resident(s._pool.base, prefault.AHEAD * SPREAD)
            assert all(first) if mode == "auto" else (t is None and not any(first))
    with pytest.raises(kv.InputError, match="closed"):
        s.warm_up()
