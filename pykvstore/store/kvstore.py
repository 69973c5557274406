"""KVStore: put, get, lookup and evict the KV state of token prefixes in a bucket.

Runs in whichever process holds the engine tensors (put/get) or only the
token ids (lookup). Several processes may open one bucket at once: capacity,
eviction and commits are settled in catalog transactions, files are written
crash-safely, and a damaged chunk is a miss, never an exception.

This class is the facade: it checks input on the caller's thread and hands
the work to the modules beside it — put.py (the put pipeline), get.py (the
get pipeline), remote.py (the Redis tier), namespaces.py (namespaces and
keys), counters.py and faults.py. The put thread runs put_async and remote
landing, the get thread get_async; the bucket's I/O threads move the bytes.
"""

from __future__ import annotations

import copy
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Union

import torch

from .. import affinity, defaults
from ..bucket import _UNSET, Bucket
from ..errors import InputError
from ..keys import as_tokens, salt_digest
from ..layout import Geometry, PagedKV
from ..policy import EvictionPolicy
from ..recorder import budget_bytes
from . import prefault
from .checks import check_call, check_start, check_store_args
from .counters import Counters, StoreStats
from .faults import Faults, Handle
from .get import GetPipeline
from .lifecycle import TokenLifecycle
from .namespaces import Namespace, Namespaces
from .parts import StoreParts, open_tiers
from .put import PutPipeline
from .remote import RemoteLanding
from .shadow import Shadow


_IO_ERRORS = (OSError, sqlite3.Error)


class KVStore(TokenLifecycle):
    """A persistent bucket of KV chunks for one model (and optional tenant salt).

    Args:
        path: the bucket directory (created if missing).
        model: model id (+ `revision`); KV of another model never hits.
        capacity: bytes or a string like "50GiB". Given, it becomes the bucket's
            capacity; omitted, the bucket keeps its own (10GiB for a new one).
            0 is the 0 GB tier (shadow mode): nothing stored or loaded, every put
            recorded, so `Bucket.size` and `stats().bucket.would_have_served` tell
            what a real bucket would serve; a resize from 0 starts storing at once.
        salt: tenant salt; stores with different salts never share a chunk.
        chunk_tokens: tokens per chunk (a multiple of the engine block size).
        hash: "xxh3_128" (default) or "sha256" for untrusted multi-tenant use.
        tp_rank, tp_size: tensor-parallel shard this store serves.
        geometry: the KV geometry `lookup` answers for before any PagedKV is seen.
        host_capacity: bytes of recently used chunks kept in this process (0: none).
        ttl, ttl_mode: the bucket's default time to live for new chunks
            ("24h"; None: forever) and "absolute" or "sliding" (hits extend it).
        policy: eviction policy, "lru" (default) or "cost" (most recompute saved per byte).
        remote: a shared Redis/Valkey tier behind the local ones: "redis://host:port/0",
            "redis+cluster://host:port,...", or a list of cluster nodes.
        remote_options: RedisTier options (prefix, username, password, ssl, timeout, ...).
        record: record every put in the bucket's access history (for sizing; default True).
        record_budget: bytes of history this process keeps the file within ("256MiB");
            the oldest accesses age out.
        prefault: fault in, at open, the host pool pages a cold load of the
            model's chunks would write (None: PYKVSTORE_PREFAULT); a store that
            only answers lookups (the vLLM scheduler's) passes False.
        io_cpus: CPUs every thread the store starts runs on ("2-3", [2, 3]);
            None: PYKVSTORE_IO_CPUS, else the opening thread's. A CPU engine
            keeps its compute cores to itself this way (affinity.py).

    Example:
        >>> with KVStore("./kvstore", model="Qwen/Qwen3-8B", capacity="50GiB") as store:
        ...     stored = store.put(tokens, PagedKV(kv_caches, dims="BHTC"), block_ids)
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        model: str,
        capacity: Union[int, str, None] = None,
        *,
        salt: Union[str, bytes, None] = None,
        revision: Optional[str] = None,
        chunk_tokens: int = 256,
        hash: str = "xxh3_128",  # noqa: A002 - the documented argument name
        tp_rank: int = 0,
        tp_size: int = 1,
        geometry: Optional[Geometry] = None,
        host_capacity: Union[int, str, None] = None,
        ttl: Any = _UNSET,
        ttl_mode: Optional[str] = None,
        policy: Union[str, EvictionPolicy, None] = None,
        remote: Union[str, list, None] = None,
        remote_options: Optional[dict[str, Any]] = None,
        record: bool = True,
        record_budget: Union[int, str, None] = None,
        prefault: Optional[bool] = None,
        io_cpus: Any = None,
    ) -> None:
        host_cap = check_store_args(model, chunk_tokens, hash, tp_rank, tp_size, geometry, host_capacity)
        budget_bytes(record_budget)  # a bad budget is refused before the bucket is opened
        salt_hex = salt_digest(salt)  # a bad salt is refused before the bucket is opened
        self._io_cpus = defaults.get("io_cpus") if io_cpus is None else affinity.parse_cpus(io_cpus)
        self._prefault = defaults.get("prefault") == "auto" if prefault is None else bool(prefault)
        self.model, self.revision, self.chunk_tokens, self.hash = model, revision, chunk_tokens, hash
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._closed = False
        self._view_of: Optional[KVStore] = None  # a salted view: the store that owns what it shares
        # called as fn(op, model, tag, seconds, tokens) after each put and get (metrics.py)
        self.observers: list = []

        # The threads the bucket's engine, the tiers and the recorder start now start on io_cpus.
        with affinity.creating_threads_on(self._io_cpus):
            self.bucket = Bucket(path, capacity=capacity, ttl=ttl, ttl_mode=ttl_mode, policy=policy)
            self._pool, self._host, self._remote = open_tiers(self.bucket, host_cap, remote, remote_options)
            self._shadow = Shadow(self.bucket, bool(record), record_budget)  # shared by salted views
        self.root = self.bucket.root
        self._catalog = self.bucket.catalog  # for tests and benchmarks that look inside; the store uses self.bucket
        self._disk = self.bucket.disk
        self._engine = self.bucket.engine
        self._faults = Faults()
        self._counters = Counters(self.bucket, model, self._faults)
        self._names = Namespaces(self.bucket, self._remote, model=model, revision=revision, chunk_tokens=chunk_tokens,
                                 tp_rank=tp_rank, tp_size=tp_size, hash=hash, salt=salt_hex,
                                 geometry=geometry)
        self._wire(set(), set())  # its prefault thread moves itself onto io_cpus

    def _wire(self, unreleased: set[str], undropped: set[str]) -> None:
        """Builds the pipelines over this store's parts (once per store, and per salted view)."""
        parts = StoreParts(self.model, self.chunk_tokens, self.bucket, self._disk, self._pool, self._host,
                           self._remote, self._names, self._counters, self._faults, self._io_cpus, self._prefault)
        self._puts = PutPipeline(parts, unreleased, undropped)
        mmap = defaults.get("mmap_read") == "auto" and defaults.direct_mode("direct_read") == 0
        self._gets = GetPipeline(parts, mmap)
        self._landing = RemoteLanding(parts, self._puts, lambda fn, *a: self._worker("put").submit(fn, *a))

    def _with_salt(self, salt: Union[str, bytes, None]) -> "KVStore":
        """This store as another tenant sees it (the vLLM connector's salts).

        The view shares the bucket handle, host pool, host tier, remote tier,
        put/get threads, counters and observers; only the namespaces differ,
        and with them every chunk key, so no tenant is handed another's chunk.
        Closing a view closes only the view (its calls refuse, as a closed
        store's do); closing the original closes every view of it.
        """
        view = copy.copy(self)
        view._view_of = self._view_of or self
        view._names = self._names.with_salt(salt_digest(salt))
        view._wire(self._puts._unreleased, self._puts._undropped)
        return view

    def _namespace(self, geometry: Geometry) -> Namespace:
        """The namespace of `geometry` in this store (SGLang's backend keys pages under its digest)."""
        return self._names.of(geometry)

    def hashes(self, tokens: Any) -> list[str]:
        """Chained chunk keys (hex) of the full chunks of `tokens`."""
        return self._names.hashes(tokens)

    # --- the public calls ----------------------------------------------------
    def lookup(self, tokens: Any) -> int:
        """How many leading tokens the bucket holds (a multiple of chunk_tokens)."""
        self._check_open()
        toks = as_tokens(tokens)
        self._counters.add(lookups=1)
        if self._shadow.active():  # the 0 GB tier holds nothing; the put after prefill is recorded
            self._shadow.lookup()
            return 0
        if len(toks) < self.chunk_tokens:
            return 0
        best = 0
        try:
            for ns in self._names.candidates():
                keys = self._names.keys(ns, toks)
                held = self.bucket.ready_prefix_len(keys, time.time())
                if self._remote is not None and held < len(keys):
                    held += self._remote.held_prefix(keys[held:])
                best = max(best, held * self.chunk_tokens)
        except sqlite3.Error as e:
            self._faults.warn_once("lookup", f"lookup failed, answering 0: {e}")
            return 0
        return best

    def put(self, tokens: Any, cache: PagedKV, block_ids: Any, *, tag: Optional[str] = None,
            ttl: Any = _UNSET, ttl_mode: Optional[str] = None) -> int:
        """Stores the full chunks of `tokens` from the engine blocks `block_ids`.

        tag records where the chunks came from ("support-bot/system-v3");
        ttl ("24h", seconds, or None for forever) and ttl_mode override the
        bucket's defaults. Chunks already held live at least as long as this
        put asks. Returns the number of leading tokens held after the call: less
        than the full chunks when the bucket cannot make room (pinned or
        in-flight chunks) or a write fails; failures are logged, not raised.
        """
        return self._put(tokens, cache, block_ids, tag, ttl, ttl_mode, None)

    def _record(self, toks: Any, cache: PagedKV, n: int, tag: Optional[str]) -> None:
        try:
            self._shadow.record(self._names, toks, cache.geometry, n, tag)
        except Exception as e:  # sizing is advisory; the put goes on
            self._faults.warn_once("record", f"could not record a put for sizing: {e!r}")

    def _put(self, tokens: Any, cache: PagedKV, block_ids: Any, tag: Optional[str], ttl: Any,
             ttl_mode: Optional[str], staged: Optional[dict[int, Any]]) -> int:
        self._check_open()
        toks, ids, n = self._check_call(tokens, cache, block_ids)
        expiry = self._puts.options(tag, ttl, ttl_mode)
        self._faults.begin()
        self._counters.add(puts=1)
        if staged is None:  # put_async recorded on the caller's thread
            self._record(toks, cache, n, tag)
            if self._shadow.active():
                return 0
        if n == 0:
            return 0
        t0 = time.perf_counter()
        try:
            held = self._puts.write(toks, cache, ids, n, tag, expiry, staged)
        except _IO_ERRORS as e:
            self._faults.add(e)
            self._faults.warn_once("put", f"put failed: {e}")
            self._counters.add(put_errors=1)
            held = 0
        if held < n:
            self._counters.add(put_truncated=1)
        self._observe("put", tag, t0, held * self.chunk_tokens)
        return held * self.chunk_tokens

    def get(self, tokens: Any, cache: PagedKV, block_ids: Any, start: int = 0) -> int:
        """Loads the held prefix of `tokens` into the engine blocks `block_ids`.

        Tokens before `start` are already in the engine's cache and are not
        written, even inside a partly covered chunk. Returns `loaded`: the
        blocks hold tokens [0, loaded) after the call (`start` when the bucket
        has nothing past it). A damaged chunk ends the load there; blocks past
        `loaded` may have been written (a copy runs while its chunk is
        verified) and are the caller's to compute, as for any miss.
        """
        self._check_open()
        toks, ids, n = self._check_call(tokens, cache, block_ids)
        check_start(start, toks)
        self._faults.begin()
        self._counters.add(gets=1)
        if self._shadow.active():
            return start
        t0 = time.perf_counter()
        try:
            end = self._gets.load(toks, cache, ids, n, start)
            if self._remote is not None:
                end = self._landing.fetch(toks, cache, ids, n, start, end)
        except _IO_ERRORS as e:
            self._faults.add(e)
            self._faults.warn_once("get", f"get failed: {e}")
            end = 0
        loaded = max(start, end)
        self._counters.add(get_tokens_loaded=loaded - start)
        self._observe("get", None, t0, loaded - start)
        return loaded

    def put_async(self, tokens: Any, cache: PagedKV, block_ids: Any, *, tag: Optional[str] = None,
                  ttl: Any = _UNSET, ttl_mode: Optional[str] = None) -> Handle:
        """`put` whose reads of the engine's blocks are done when it returns.

        The chunks the bucket lacks are copied into host-pool buffers now (a
        memcpy, or a DMA on a GPU); checksums, file writes and commits run on
        the store's put thread. The engine may reuse the blocks at once, even
        if the request is preempted. Chunks that do not fit the pool's free
        memory are not stored by this call (the held prefix ends there).
        """
        self._check_open()
        toks, ids, n = self._check_call(tokens, cache, block_ids)
        self._puts.options(tag, ttl, ttl_mode)
        self._record(toks, cache, n, tag)
        if self._shadow.active():  # the 0 GB tier: the engine's blocks are not even read
            self._counters.add(puts=1)
            return Handle(Shadow.done((0, [])))
        staged = self._puts.stage(toks, cache, ids, n)
        return Handle(self._worker("put").submit(self._faults.run, self._put, tokens, cache, block_ids, tag, ttl,
                                                 ttl_mode, staged))

    def get_async(self, tokens: Any, cache: PagedKV, block_ids: Any, start: int = 0) -> Handle:
        """`get` on the store's worker thread; input is checked before it is queued."""
        self._check_open()
        toks, _, _ = self._check_call(tokens, cache, block_ids)
        check_start(start, toks)
        return Handle(self._worker("get").submit(self._faults.run, self.get, tokens, cache, block_ids, start))

    def stats(self, price_per_mtok: Optional[float] = None, stale_after: Any = "7d") -> StoreStats:
        """This process's counters, and the bucket's view (`.bucket`) shared by every process."""
        self._shadow.flush()
        return self._counters.report(self.bucket.stats(price_per_mtok, stale_after), self._host, self._engine,
                                     self._pool, self._remote)

    @property
    def capacity(self) -> int:
        return self.bucket.capacity

    def warm_up(self) -> None:
        """Faults in, on the prefault thread, the host-pool pages the first puts and loads will use.

        A serving engine's worker calls it at start-up (the vLLM connector
        does), so its first requests' staging copies do not race the thread
        that faults pages in ahead of use; nothing when prefault is off.
        """
        self._check_open()
        if self._prefault:
            prefault.keep_ahead(self._pool, self._io_cpus)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._view_of is not None:  # the bucket, pool, tiers and threads are the original store's
            return
        prefault.stop(self._pool)  # its thread ends after the current slice, and frees the pool then
        for kind in ("get", "put"):  # a get may hand remote chunks to the put thread
            if kind in self._executors:
                self._executors[kind].shutdown(wait=True)
        self._shadow.close()
        if self._remote is not None:
            self._remote.close()
        self._puts.retry_releases()
        self._host.clear()
        self._engine.set_pool(None)
        self.bucket.close()

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KVStore({str(self.root)!r}, model={self.model!r}, chunk_tokens={self.chunk_tokens})"

    # --- internals -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed or (self._view_of is not None and self._view_of._closed):
            raise InputError("this KVStore is closed")

    def _check_call(self, tokens: Any, cache: PagedKV, block_ids: Any) -> tuple[Any, torch.Tensor, int]:
        """check_call; the cache's geometry becomes the one `lookup` and `hashes` answer for."""
        toks, ids, n = check_call(self.chunk_tokens, tokens, cache, block_ids)
        self._names.geometry = cache.geometry
        return toks, ids, n

    def _worker(self, kind: str = "put") -> ThreadPoolExecutor:
        """One thread for background puts (and landing remote chunks), one for
        gets: a load never queues behind a store."""
        ex = self._executors.get(kind)
        if ex is None:
            ex = self._executors[kind] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pykvstore-{kind}",
                                                            initializer=affinity.pin_current_thread,
                                                            initargs=(self._io_cpus,))
        return ex

    def _observe(self, op: str, tag: Optional[str], t0: float, tokens: int) -> None:
        seconds = time.perf_counter() - t0
        for fn in self.observers:
            try:
                fn(op, self.model, tag, seconds, tokens)
            except Exception as e:  # an observer never breaks the serving path
                self._faults.warn_once(f"observer:{op}", f"a put/get observer failed: {e!r}")

