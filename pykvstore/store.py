"""KVStore: put, get, lookup and evict the KV state of token prefixes in a bucket.

Runs in whichever process holds the engine tensors (put/get) or only the
token ids (lookup). Several processes may open one bucket at once: capacity,
eviction and commits are settled in catalog transactions, files are written
crash-safely, and a damaged chunk is a miss, never an exception.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from . import _C, defaults
from .bucket import _UNSET, TTL_MODES, Bucket, BucketStats, Removed, row_from_metadata
from .catalog import WRITING, Catalog, ChunkRow
from .chunk_file import (CHECKSUM_ALGO, PAYLOAD_ALIGN, ChunkHeader, checksum, decode_header, encode_header,
                         header_length, payload_checksum_ok)
from .errors import ChunkError, InputError
from .keys import FORMAT_VERSION, HASH_ALGORITHMS, as_tokens, chunk_keys, namespace_digest, salt_digest
from .layout import Geometry, PagedKV
from .policy import EvictionPolicy
from .sizes import parse_duration, parse_size
from .tiers.host import HostTier
from .tiers.disk import HOST

log = logging.getLogger("pykvstore")

_IO_ERRORS = (OSError, sqlite3.Error)
_POOL_STAGING = 512 << 20  # pool bytes beyond the host tier, for chunks in flight


@dataclass
class StoreStats:
    """Counters of this store object, and the bucket as every process sees it."""

    puts: int = 0
    put_chunks_written: int = 0
    put_chunks_present: int = 0
    put_bytes_written: int = 0
    put_truncated: int = 0  # puts that stored less than all their full chunks
    put_errors: int = 0
    gets: int = 0
    get_tokens_loaded: int = 0
    host_hits: int = 0  # chunks served from host memory
    disk_hits: int = 0  # chunks read from disk
    get_bytes_read: int = 0
    corrupt_chunks: int = 0
    lookups: int = 0
    capacity_bytes: int = 0
    used_bytes: int = 0
    chunks: int = 0
    host_bytes: int = 0
    host_chunks: int = 0
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    io: dict[str, int] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)  # the host pool: capacity, free bytes, pinned, ...
    remote: dict[str, int] = field(default_factory=dict)  # the Redis tier's counters, if configured
    bucket: Optional[BucketStats] = None  # the bucket as every process sees it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Handle:
    """A put or get in flight: `wait()` returns what the call would have returned.

    A put or get never raises for an I/O fault (it stores or loads less, and
    the serving path goes on); `errors` lists what it met, each exception
    naming the operation and the file, and `wait(check=True)` raises the first.
    """

    def __init__(self, future: Future) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait_done(self, timeout: float) -> bool:
        """Blocks up to `timeout` seconds for the call to end; True when it has."""
        return not wait([self._future], timeout=timeout).not_done

    def wait(self, timeout: Optional[float] = None, check: bool = False) -> int:
        value, errors = self._future.result(timeout)
        if check and errors:
            raise errors[0]
        return value

    @property
    def errors(self) -> list[Exception]:
        """The faults the call met (empty until it is done)."""
        return list(self._future.result()[1]) if self._future.done() else []


@dataclass(frozen=True)
class _Namespace:
    digest: bytes
    hex: str
    params: dict[str, Any]


class KVStore:
    """A persistent bucket of KV chunks for one model (and optional tenant salt).

    Args:
        path: the bucket directory (created if missing).
        model: model id (+ `revision`); KV of another model never hits.
        capacity: bytes or a string like "50GiB". Given, it becomes the bucket's
            capacity; omitted, the bucket keeps its own (10GiB for a new one).
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
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"model must be a non-empty string, got {model!r}")
        if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens <= 0:
            raise InputError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
        if hash not in HASH_ALGORITHMS:
            raise InputError(f"hash must be one of {HASH_ALGORITHMS}, got {hash!r}")
        if not (isinstance(tp_size, int) and isinstance(tp_rank, int) and tp_size >= 1 and 0 <= tp_rank < tp_size):
            raise InputError(f"tp_rank must lie in [0, tp_size) with tp_size >= 1, got {tp_rank}/{tp_size}")
        if geometry is not None and not isinstance(geometry, Geometry):
            raise InputError(f"geometry must be a pykvstore.Geometry, got {type(geometry).__name__}")
        if host_capacity is None:
            host_cap = defaults.get("host_capacity")
        elif host_capacity == 0 and not isinstance(host_capacity, bool):
            host_cap = 0  # no host tier: every get reads the bucket
        else:
            host_cap = parse_size(host_capacity, "host capacity")

        self.model = model
        self.revision = revision
        self.chunk_tokens = chunk_tokens
        self.hash = hash
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self._salt = salt_digest(salt)
        self._geometry = geometry
        self._namespaces: dict[Geometry, _Namespace] = {}
        self._registered: set[str] = set()
        self._stats = StoreStats()
        self._stats_lock = threading.Lock()
        self._warned: set[str] = set()
        self._unreleased: set[str] = set()
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._closed = False
        # called as fn(op, model, tag, seconds, tokens) after each put and get (metrics.py)
        self.observers: list = []

        self.bucket = Bucket(path, capacity=capacity, ttl=ttl, ttl_mode=ttl_mode, policy=policy)
        self.root = self.bucket.root
        self._catalog = self.bucket.catalog
        self._disk = self.bucket.disk
        self._engine = self.bucket.engine
        _C.set_buffer_cache_limit(defaults.get("buffer_cache"))
        # Staging buffers, reads and the host tier share one pool: a chunk kept
        # in host memory is already where DMA and O_DIRECT want it.
        self._pool = _C.HostPool(defaults.get("host_pool") or host_cap + _POOL_STAGING, pin=True, huge_pages=True)
        self._engine.set_pool(self._pool)
        self._mmap = defaults.get("mmap_read") == "auto" and defaults.direct_mode("direct_read") == 0
        self._calls = threading.local()  # faults met by the put/get running on this thread
        self._host = HostTier(host_cap)
        self.bucket.listeners.append(self._host.discard)
        self._remote = None
        if remote is not None:
            from .tiers.redis import RedisTier  # redis-py only when a remote is used

            try:
                self._remote = RedisTier(remote, **(remote_options or {}))
            except BaseException:
                self.bucket.close()
                raise

    # --- namespaces and keys -------------------------------------------------
    def _namespace(self, geometry: Geometry) -> _Namespace:
        ns = self._namespaces.get(geometry)
        if ns is None:
            params = {
                "format": FORMAT_VERSION, "model": self.model, "revision": self.revision,
                "geometry": geometry.as_params(), "chunk_tokens": self.chunk_tokens,
                "tp_rank": self.tp_rank, "tp_size": self.tp_size, "hash": self.hash, "salt": self._salt,
            }
            digest = namespace_digest(params, self.hash)
            ns = self._namespaces[geometry] = _Namespace(digest, digest.hex(), params)
        return ns

    def _candidate_namespaces(self) -> list[_Namespace]:
        """Namespaces `lookup` may answer for: the known geometry, else every stored one."""
        if self._geometry is not None:
            return [self._namespace(self._geometry)]
        out = []
        stored = self._catalog.namespaces(self.model)
        if self._remote is not None:
            known = {d for d, _ in stored}
            stored += [(d, json.loads(p)) for d, p in self._remote.namespaces(self.model).items() if d not in known]
        for digest, params in stored:
            try:
                g = Geometry(**params["geometry"])
            except (InputError, KeyError, TypeError):
                continue
            ns = self._namespace(g)
            if ns.hex == digest:  # same revision, salt, chunk size, TP shard, hash
                out.append(ns)
        return out

    def hashes(self, tokens: Any) -> list[str]:
        """Chained chunk keys (hex) of the full chunks of `tokens`."""
        toks = as_tokens(tokens)
        if self._geometry is None:
            raise InputError("hashes() needs the KV geometry: pass geometry= to KVStore or put/get a PagedKV first")
        return [k.hex() for k in chunk_keys(self._namespace(self._geometry).digest, toks, self.chunk_tokens, self.hash)]

    # --- the public calls ----------------------------------------------------
    def lookup(self, tokens: Any) -> int:
        """How many leading tokens the bucket holds (a multiple of chunk_tokens)."""
        self._check_open()
        toks = as_tokens(tokens)
        with self._stats_lock:
            self._stats.lookups += 1
        if len(toks) < self.chunk_tokens:
            return 0
        best = 0
        try:
            for ns in self._candidate_namespaces():
                keys = [k.hex() for k in chunk_keys(ns.digest, toks, self.chunk_tokens, self.hash)]
                held = self._catalog.ready_prefix_len(keys, time.time())
                if self._remote is not None and held < len(keys):
                    held += self._remote.held_prefix(keys[held:])
                best = max(best, held * self.chunk_tokens)
        except sqlite3.Error as e:
            self._warn_once("lookup", f"lookup failed, answering 0: {e}")
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

    def _put(self, tokens: Any, cache: PagedKV, block_ids: Any, tag: Optional[str], ttl: Any,
             ttl_mode: Optional[str], staged: Optional[dict[int, Any]]) -> int:
        self._check_open()
        toks, ids, n = self._check_call(tokens, cache, block_ids)
        expiry = self._put_options(tag, ttl, ttl_mode)
        self._calls.errors = []
        with self._stats_lock:
            self._stats.puts += 1
        if n == 0:
            return 0
        t0 = time.perf_counter()
        try:
            held = self._put_chunks(toks, cache, ids, n, tag, expiry, staged)
        except _IO_ERRORS as e:
            self._fault(e)
            self._warn_once("put", f"put failed: {e}")
            with self._stats_lock:
                self._stats.put_errors += 1
            held = 0
        if held < n:
            with self._stats_lock:
                self._stats.put_truncated += 1
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
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(toks):
            raise InputError(f"start must be an integer in [0, {len(toks)}] (the token count), got {start!r}")
        self._calls.errors = []
        with self._stats_lock:
            self._stats.gets += 1
        t0 = time.perf_counter()
        try:
            end = self._get_chunks(toks, cache, ids, n, start)
            if self._remote is not None:
                end = self._get_remote(toks, cache, ids, n, start, end)
        except _IO_ERRORS as e:
            self._fault(e)
            self._warn_once("get", f"get failed: {e}")
            end = 0
        loaded = max(start, end)
        with self._stats_lock:
            self._stats.get_tokens_loaded += loaded - start
        self._observe("get", None, t0, loaded - start)
        return loaded

    def evict(self, tokens: Any) -> int:
        """Removes the chunks of `tokens` and every chunk chained after them (pinned ones too); returns bytes freed."""
        self._check_open()
        keys = self._keys_everywhere(tokens)
        if not keys:
            return 0
        with self._catalog.transaction() as c:
            rows = Catalog.subtree(c, keys)
            return self.bucket.remove_rows(c, rows, "manual", time.time()).bytes

    # --- lifecycle by tokens (the bucket-wide controls are on self.bucket) ------
    def pin(self, tokens: Any, ttl: Any = "keep") -> int:
        """Pins the held chunks of `tokens`: capacity never evicts them.

        ttl: "keep" leaves their expiry as it is, None makes them live forever,
        a duration sets a new one. Returns how many chunks were pinned.
        """
        self._check_open()
        return self.bucket.pin(self._keys_everywhere(tokens), True, ttl)

    def unpin(self, tokens: Any) -> int:
        self._check_open()
        return self.bucket.pin(self._keys_everywhere(tokens), False)

    def extend(self, tokens: Any, ttl: Any) -> int:
        """Sets the held chunks of `tokens` to expire `ttl` from now (None: never); returns how many changed."""
        self._check_open()
        secs = None if ttl is None else parse_duration(ttl, "ttl")
        keys = self._keys_everywhere(tokens)
        with self._catalog.transaction() as c:
            return Catalog.set_expiry(c, keys, None if secs is None else time.time() + secs, secs)

    def clear(self, *, prefix: Any = None, include_pinned: bool = False, **selectors: Any) -> Removed:
        """Bucket.clear, plus prefix=tokens: that prefix's chunks and every chunk chained after them."""
        self._check_open()
        if prefix is not None:
            selectors["keys"] = self._keys_everywhere(prefix)
        return self.bucket.clear(include_pinned=include_pinned, **selectors)

    def gc(self) -> Removed:
        return self.bucket.gc()

    def resize(self, capacity: Union[int, str]) -> Removed:
        return self.bucket.resize(capacity)

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
        self._put_options(tag, ttl, ttl_mode)
        staged = self._stage(toks, cache, ids, n)
        return Handle(self._worker("put").submit(self._with_errors, self._put, tokens, cache, block_ids, tag, ttl,
                                                 ttl_mode, staged))

    def _stage(self, toks, cache: PagedKV, ids: torch.Tensor, n: int) -> dict[int, Any]:
        """Chunk index -> a pool buffer holding that chunk's payload at PAYLOAD_ALIGN, for
        the leading chunks the bucket does not hold, as far as the pool has room."""
        if n == 0:
            return {}
        g = cache.geometry
        ct, bpc = self.chunk_tokens, self.chunk_tokens // cache.block_size
        keys = [k.hex() for k in chunk_keys(self._namespace(g).digest, toks[: n * ct], ct, self.hash)]
        try:
            held = self._catalog.existing(keys, time.time())
        except sqlite3.Error:
            held = set()
        shape, size = g.chunk_shape(ct), PAYLOAD_ALIGN + g.chunk_bytes(ct)
        staged: dict[int, Any] = {}
        for i, key in enumerate(keys):
            if key in held:
                continue
            buf = _C.AlignedBuffer(size, self._pool)
            if not buf.from_pool:  # no room left: what is staged is what this put stores
                break
            payload = torch.frombuffer(buf, dtype=torch.uint8)[PAYLOAD_ALIGN:].view(g.view_dtype).view(shape)
            cache.gather(ids[i * bpc : (i + 1) * bpc], payload)
            staged[i] = buf
        return staged

    def get_async(self, tokens: Any, cache: PagedKV, block_ids: Any, start: int = 0) -> Handle:
        """`get` on the store's worker thread; input is checked before it is queued."""
        self._check_open()
        toks, _, _ = self._check_call(tokens, cache, block_ids)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(toks):
            raise InputError(f"start must be an integer in [0, {len(toks)}] (the token count), got {start!r}")
        return Handle(self._worker("get").submit(self._with_errors, self.get, tokens, cache, block_ids, start))

    def _with_errors(self, fn, *args: Any, **kwargs: Any) -> tuple[int, list[Exception]]:
        value = fn(*args, **kwargs)
        return value, list(getattr(self._calls, "errors", []))

    def _fault(self, err: Exception) -> None:
        """Records a fault the current put/get met (its Handle reports them)."""
        errors = getattr(self._calls, "errors", None)
        if errors is not None:
            errors.append(_detached(err))

    def stats(self, price_per_mtok: Optional[float] = None, stale_after: Any = "7d") -> StoreStats:
        """This process's counters, and the bucket's view (`.bucket`) shared by every process."""
        with self._stats_lock:
            s = StoreStats(**{k: v for k, v in self._stats.to_dict().items() if k != "bucket"})
        b = self.bucket.stats(price_per_mtok, stale_after)
        s.bucket = b
        s.used_bytes, s.chunks, s.capacity_bytes, s.by_model = b.used_bytes, b.chunks, b.capacity_bytes, b.by_model
        s.host_bytes, s.host_chunks = self._host.used, len(self._host)
        s.io = dict(self._engine.counters())
        s.pool = dict(self._pool.stats())
        if self._remote is not None:
            s.remote = self._remote.stats.to_dict()
        return s

    @property
    def capacity(self) -> int:
        return self.bucket.capacity

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for kind in ("get", "put"):  # a get may hand remote chunks to the put thread
            if kind in self._executors:
                self._executors[kind].shutdown(wait=True)
        if self._remote is not None:
            self._remote.close()
        self._retry_releases()
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
        if self._closed:
            raise InputError("this KVStore is closed")

    def _check_call(self, tokens: Any, cache: PagedKV, block_ids: Any):
        if not isinstance(cache, PagedKV):
            raise InputError(f"cache must be a pykvstore.PagedKV, got {type(cache).__name__}")
        if self.chunk_tokens % cache.block_size:
            raise InputError(
                f"chunk_tokens {self.chunk_tokens} is not a multiple of the engine block size {cache.block_size}")
        toks = as_tokens(tokens)
        n = len(toks) // self.chunk_tokens
        ids = cache.block_ids(block_ids, n * (self.chunk_tokens // cache.block_size))
        self._geometry = cache.geometry
        return toks, ids, n

    def _worker(self, kind: str = "put") -> ThreadPoolExecutor:
        """One thread for background puts (and landing remote chunks), one for
        gets: a load never queues behind a store."""
        ex = self._executors.get(kind)
        if ex is None:
            ex = self._executors[kind] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pykvstore-{kind}")
        return ex

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def _register(self, ns: _Namespace) -> None:
        if ns.hex not in self._registered:
            self._catalog.add_namespace(ns.hex, self.model, ns.params)
            if self._remote is not None:
                self._remote.add_namespace(self.model, ns.hex, json.dumps(ns.params, sort_keys=True))
            self._registered.add(ns.hex)

    def _put_options(self, tag: Any, ttl: Any, ttl_mode: Optional[str]) -> tuple[Optional[float], Optional[str]]:
        """Checks a put's tag; its expiry as `_ttl` gives it."""
        if tag is not None and not isinstance(tag, str):
            raise InputError(f"tag must be a string, got {type(tag).__name__}")
        return self._ttl(ttl, ttl_mode)

    def _ttl(self, ttl: Any, ttl_mode: Optional[str]) -> tuple[Optional[float], Optional[str]]:
        """(seconds or None, mode) for a put, from its arguments or the bucket's defaults."""
        if ttl_mode is not None and ttl_mode not in TTL_MODES:
            raise InputError(f"ttl_mode must be one of {TTL_MODES}, got {ttl_mode!r}")
        if ttl is _UNSET:
            config = self.bucket.config
            secs = config.get("default_ttl")
            mode = ttl_mode or config.get("ttl_mode", "absolute")
        else:
            secs = None if ttl is None else parse_duration(ttl, "ttl")
            mode = ttl_mode or self.bucket.config.get("ttl_mode", "absolute")
        return secs, mode

    def _keys_everywhere(self, tokens: Any) -> list[str]:
        """Keys of `tokens` in every namespace `lookup` would consult."""
        toks = as_tokens(tokens)
        keys: list[str] = []
        for ns in self._candidate_namespaces():
            keys += [k.hex() for k in chunk_keys(ns.digest, toks, self.chunk_tokens, self.hash)]
        return keys

    def _observe(self, op: str, tag: Optional[str], t0: float, tokens: int) -> None:
        seconds = time.perf_counter() - t0
        for fn in self.observers:
            try:
                fn(op, self.model, tag, seconds, tokens)
            except Exception as e:  # an observer never breaks the serving path
                self._warn_once(f"observer:{op}", f"a put/get observer failed: {e!r}")

    def _count(self, values: dict[str, int], touch: Optional[list[str]] = None) -> None:
        """Adds to this model's counters in the catalog (and records hits), best effort."""
        now = time.time()
        try:
            with self._catalog.transaction() as c:
                if touch:
                    Catalog.touch(c, touch, now)
                Catalog.count(c, self.model, values, now)
        except sqlite3.Error as e:  # counters and LRU order are advisory; the call itself succeeded
            self._warn_once("count", f"could not record counters: {e}")

    def _reserve(self, row: ChunkRow, protect) -> Optional[bool]:
        """Space and a row for a chunk about to be written.

        True: reserved. None: the chunk exists or is being written by someone
        else. Raises _NoRoom when the bucket cannot make room.
        """
        now = time.time()
        with self._catalog.transaction() as c:
            old = c.execute("SELECT expires, state FROM chunks WHERE key = ?", (row.key,)).fetchone()
            if old is not None:
                if old[0] is None or old[0] > now or old[1] == WRITING:
                    return None
                # expired: replace it (and the tail it would strand)
                self.bucket.remove_rows(c, Catalog.subtree(c, [row.key]), "ttl", now)
            if self.bucket.make_room(c, row.nbytes, protect, self.model) is None:
                raise _NoRoom
            Catalog.insert(c, row)
            return True

    def _put_chunks(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, tag: Optional[str],
                    expiry: tuple[Optional[float], Optional[str]], staged: Optional[dict[int, Any]] = None) -> int:
        """Writes the chunks of a put. With `staged` (put_async), payloads come from those
        buffers and the engine's blocks are never read here: a chunk not staged ends the put."""
        g = cache.geometry
        ns = self._namespace(g)
        self._register(ns)
        ct, bpc = self.chunk_tokens, self.chunk_tokens // cache.block_size
        keys = [k.hex() for k in chunk_keys(ns.digest, toks[: n * ct], ct, self.hash)]
        parents = [ns.hex] + keys[:-1]
        ttl, mode = expiry
        start_time = time.time()
        existing = self._catalog.existing(keys, start_time)
        if existing:
            with self._catalog.transaction() as c:
                Catalog.refresh(c, list(existing), None if ttl is None else start_time + ttl, start_time)
        shape, nbytes = g.chunk_shape(ct), g.chunk_bytes(ct)
        protect = set(keys)
        owner = f"{HOST}:{os.getpid()}"
        inflight: deque = deque()
        ok = [False] * n
        written = [0, 0]  # chunks, bytes
        failed_at = n

        def finish_one() -> None:
            nonlocal failed_at
            i, row, buf, payload, fut = inflight.popleft()
            try:
                fut.result()
                committed = self._catalog.mark_ready(row.key, time.time())
            except (OSError, sqlite3.Error) as e:
                self._fault(e)
                self._warn_once(f"write:{type(e).__name__}:{getattr(e, 'errno', '')}",
                                f"storing chunk {row.key[:16]} failed: {e}")
                self._forget(row)
                failed_at = min(failed_at, i)
                return
            if not committed:
                self._disk.remove(row.path)  # removed while in flight (evict/clear)
                failed_at = min(failed_at, i)
                return
            ok[i] = True
            written[0] += 1
            written[1] += row.nbytes
            self._host.put(row.key, payload, buf)
            if self._remote is not None:  # write-through, handed off to the tier's thread
                self._remote.put(row.key, memoryview(buf)[: row.nbytes], ttl,
                                 {"model": self.model, "tag": tag or "", "tokens": str(ct), "index": str(i)}, buf)
            with self._stats_lock:
                self._stats.put_chunks_written += 1
                self._stats.put_bytes_written += row.nbytes

        try:
            for i in range(n):
                if failed_at < n:
                    break
                if keys[i] in existing:
                    ok[i] = True
                    with self._stats_lock:
                        self._stats.put_chunks_present += 1
                    continue
                now = time.time()
                meta = {
                    "format": FORMAT_VERSION, "model": self.model, "namespace": ns.hex, "key": keys[i],
                    "parent": parents[i], "tokens": str(ct), "index": str(i), "created": f"{now:.6f}",
                    "tag": tag or "", "params": json.dumps(ns.params, sort_keys=True, separators=(",", ":")),
                    "ttl": "" if ttl is None else repr(ttl), "ttl_mode": mode or "",
                    "checksum_algo": CHECKSUM_ALGO,
                }
                off = header_length(meta, g.safetensors_dtype, shape, nbytes)
                if staged is not None and i not in staged:
                    failed_at = i  # not copied out of the engine in time (no pool room, or evicted since)
                    break
                rel = self._disk.relpath(self.model, ns.hex, keys[i])
                row = ChunkRow(key=keys[i], parent=parents[i], namespace=ns.hex, model=self.model, chunk_index=i,
                               tokens=ct, nbytes=off + nbytes, path=rel, created=now, last_access=now,
                               tag=tag, state=WRITING, owner=owner, expires=None if ttl is None else now + ttl,
                               sliding_ttl=ttl if ttl is not None and mode == "sliding" else None)
                try:
                    reserved = self._reserve(row, protect)
                except _NoRoom:
                    failed_at = i
                    break
                except sqlite3.Error as e:  # e.g. the disk under the catalog is full
                    self._warn_once("reserve", f"cannot reserve space for a chunk: {e}")
                    failed_at = i
                    break
                if reserved is None:  # another writer got there first
                    ok[i] = True
                    continue
                try:
                    if staged is not None and off == PAYLOAD_ALIGN:
                        buf = staged.pop(i)  # the payload is in place already
                    else:
                        buf = _C.AlignedBuffer(off + nbytes, self._pool)
                    whole = torch.frombuffer(buf, dtype=torch.uint8)
                    payload = whole[off:].view(g.view_dtype).view(shape)
                    if staged is None:
                        cache.gather(ids[i * bpc : (i + 1) * bpc], payload)
                    elif off != PAYLOAD_ALIGN:  # a header longer than one page: move the payload
                        payload.view(torch.uint8).view(-1).copy_(
                            torch.frombuffer(staged.pop(i), dtype=torch.uint8)[PAYLOAD_ALIGN:])
                    meta["checksum"] = checksum(memoryview(buf)[off:])
                    head = encode_header(meta, g.safetensors_dtype, shape, nbytes)
                    assert len(head) == off, "header length changed with the checksum"
                    whole[:off].copy_(torch.frombuffer(bytearray(head), dtype=torch.uint8))
                    fut = self._disk.write(rel, buf, off + nbytes)
                except BaseException:
                    self._forget(row)
                    raise
                inflight.append((i, row, buf, payload, fut))
                while len(inflight) >= defaults.get("inflight"):
                    finish_one()
        finally:
            while inflight:  # every write started is settled, whatever happened above
                finish_one()
        held = 0
        while held < n and ok[held]:
            held += 1
        if held < n:
            self._drop_unreachable(keys[held:], ok[held:])
        self._retry_releases()
        self._count({"puts": 1, "put_tokens": held * ct, "chunks_written": written[0], "bytes_written": written[1]})
        return held

    def _drop_unreachable(self, keys: list[str], written: list[bool]) -> None:
        """Chunks this put wrote after one that failed: nothing could reach them."""
        mine = set(k for k, w in zip(keys, written) if w)
        if not mine:
            return
        try:
            with self._catalog.transaction() as c:
                rows = [r for r in Catalog.subtree(c, list(mine)) if r.key in mine]
                Catalog.delete(c, [r.key for r in rows])
                for r in rows:
                    self._disk.remove(r.path)
        except sqlite3.Error as e:  # they stay indexed: unreachable, evicted as leaves in time
            self._warn_once("drop", f"could not drop unreachable chunks: {e}")
        for k in mine:
            self._host.discard(k)

    def _forget(self, row: ChunkRow) -> None:
        """Undoes a reservation whose write failed. Best effort: if the catalog
        cannot be written either, the row stays `writing` under this process and
        is reclaimed by the first open after it exits."""
        self._disk.remove(row.path)
        try:
            self._catalog.abort(row.key)
        except sqlite3.Error as e:
            self._warn_once("abort", f"could not release a failed chunk's reservation (will retry): {e}")
            self._unreleased.add(row.key)

    def _retry_releases(self) -> None:
        """Retries reservations `_forget` could not release (the catalog's disk was full)."""
        for key in list(self._unreleased):
            try:
                self._catalog.abort(key)
                self._unreleased.discard(key)
            except sqlite3.Error:
                return

    def _get_chunks(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, start: int) -> int:
        g = cache.geometry
        ns = self._namespace(g)
        ct, bpc = self.chunk_tokens, self.chunk_tokens // cache.block_size
        keys = [k.hex() for k in chunk_keys(ns.digest, toks[: n * ct], ct, self.hash)]
        now = time.time()
        rows = self._catalog.ready_prefix(keys, now)
        first = start // ct
        if len(rows) <= first:
            self._count({"gets": 1, "miss_tokens": len(toks) - start})
            return 0
        shape, nbytes = g.chunk_shape(ct), g.chunk_bytes(ct)
        max_size = 2 * (nbytes + (1 << 20))  # anything larger is not one of our chunks
        pending: deque = deque()
        copies: list = []  # device copies in flight and the host chunks they read
        nxt = first
        end = 0
        # A load into host memory copies from the file's mapping, with no read
        # buffer; into host blocks the native copier knows, the I/O thread does
        # that copy itself while it verifies the chunk.
        mapped = self._mmap and cache.device.type == "cpu"
        layout = cache.host_layout if mapped else None

        def read(i: int, row: ChunkRow):
            if layout is not None:
                return self._disk.map_scatter(row.path, max_size, layout, ids[i * bpc : (i + 1) * bpc],
                                              max(0, start - i * ct), nbytes)
            if mapped:
                return self._disk.map(row.path, max_size)
            return self._disk.read(row.path, max_size, True)

        def submit_more() -> None:
            nonlocal nxt
            while nxt < len(rows) and len(pending) < defaults.get("inflight"):
                row = rows[nxt]
                src = self._host.get(row.key)
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
                if payload is None:  # blocks an I/O thread wrote past here count as not loaded
                    break
            if not copied:
                # While reads are in flight the I/O threads hold the cores: copy on this one.
                busy = any(not isinstance(p[2], torch.Tensor) for p in pending)
                cache.scatter(ids[i * bpc : (i + 1) * bpc], payload, max(0, start - i * ct), 1 if busy else 0,
                              copies)
            end = (i + 1) * ct
            loaded_keys.append(row.key)
            bytes_read += nread
            with self._stats_lock:
                if from_disk:
                    self._stats.disk_hits += 1
                    self._stats.get_bytes_read += nread
                else:
                    self._stats.host_hits += 1
            submit_more()
        for _, _, src in pending:  # after a damaged chunk: let reads in flight finish, unused
            if not isinstance(src, torch.Tensor):
                try:
                    src.result()
                except OSError:
                    pass
        for ticket, _ in copies:  # the chunks' host memory is reused once their copies are done
            ticket.wait()
        hit = max(0, end - start)
        self._count({"gets": 1, "hit_tokens": hit, "miss_tokens": len(toks) - start - hit, "bytes_read": bytes_read},
                    touch=keys[:first] + loaded_keys)
        return end

    def _sound(self, buf: Any, payload_hash: Optional[int], key: str, ns: _Namespace, g: Geometry,
               shape) -> ChunkHeader:
        """The header of a chunk image that is exactly the chunk asked for; ChunkError otherwise."""
        hdr = decode_header(buf, len(buf))
        m = hdr.metadata
        if m.get("key") != key or m.get("namespace") != ns.hex:
            raise ChunkError("it holds another chunk (key or namespace differ)")
        if hdr.shape != shape or hdr.dtype != g.safetensors_dtype:
            raise ChunkError(f"shape {hdr.shape} {hdr.dtype} does not match the cache's {shape} {g.safetensors_dtype}")
        if not payload_checksum_ok(hdr, buf, payload_hash):
            raise ChunkError("payload checksum mismatch")
        return hdr

    @staticmethod
    def _payload(buf: Any, hdr: ChunkHeader, g: Geometry, shape) -> torch.Tensor:
        payload = torch.frombuffer(buf, dtype=torch.uint8, offset=hdr.payload_offset, count=hdr.nbytes)
        return payload.view(g.view_dtype).view(shape)

    def _verified(self, fut, row: ChunkRow, ns: _Namespace, g: Geometry,
                  shape) -> tuple[Optional[torch.Tensor], int, bool]:
        """A chunk read from disk: (payload, bytes read, whether the I/O thread
        already copied it into the blocks), or (None, 0, False) and the chunk
        dropped if it is not sound."""
        try:
            result = fut.result()  # read (or mapped) and hashed on an I/O thread
            data = result.file if isinstance(result, _C.MapResult) else result.buffer
            if result.payload_hash is None:
                raise ChunkError("no payload after the header")
            hdr = self._sound(data, result.payload_hash, row.key, ns, g, shape)
        except (ChunkError, OSError) as e:
            self._fault(e if isinstance(e, OSError) else ChunkError(f"{row.path}: {e}"))
            self._drop_damaged(row, e)
            return None, 0, False
        payload = self._payload(data, hdr, g, shape)
        self._host.put(row.key, payload, data)
        return payload, len(data), isinstance(result, _C.MapResult) and result.scattered

    def _get_remote(self, toks, cache: PagedKV, ids: torch.Tensor, n: int, start: int, end: int) -> int:
        """Continues a load from the Redis tier past what the local tiers held (one round trip).

        Fetched chunks are verified like local files, then land in the local
        tiers on the store's worker thread (the engine blocks are not read again).
        """
        ct, bpc = self.chunk_tokens, self.chunk_tokens // cache.block_size
        nxt = max(end, start) // ct
        if nxt >= n:
            return end
        g = cache.geometry
        ns = self._namespace(g)
        self._register(ns)
        shape = g.chunk_shape(ct)
        keys = [k.hex() for k in chunk_keys(ns.digest, toks[: n * ct], ct, self.hash)]
        values = self._remote.get_many(keys[nxt:n])
        landed = []
        for j, value in enumerate(values):
            c = nxt + j
            if value is None:
                self._remote.count(misses=n - c)
                break
            buf = _C.AlignedBuffer(len(value), self._pool)  # aligned: it lands on disk through O_DIRECT
            np.frombuffer(buf, dtype=np.uint8)[:] = np.frombuffer(value, dtype=np.uint8)
            try:
                hdr = self._sound(buf, None, keys[c], ns, g, shape)
            except ChunkError as e:
                self._warn_once(f"remote:{keys[c]}", f"remote chunk {keys[c][:16]} is not sound ({e}); a miss")
                self._remote.count(misses=n - c)
                break
            payload = self._payload(buf, hdr, g, shape)
            cache.scatter(ids[c * bpc : (c + 1) * bpc], payload, max(0, start - c * ct))
            self._remote.count(hits=1)
            end = (c + 1) * ct
            landed.append((hdr, buf, payload))
        if landed:
            self._worker().submit(self._land, landed)
        return end

    def _land(self, landed: list) -> None:
        """Writes chunks fetched remotely into the local tiers (the store's worker thread)."""
        protect = {hdr.metadata["key"] for hdr, _, _ in landed}
        for hdr, buf, payload in landed:
            m = hdr.metadata
            rel = self._disk.relpath(self.model, m["namespace"], m["key"])
            try:
                row, _ = row_from_metadata(m, rel, len(buf))
                row.state, row.owner, row.last_access = WRITING, f"{HOST}:{os.getpid()}", time.time()
                if not self._reserve(row, protect):
                    continue
                try:
                    self._disk.write(rel, buf, len(buf)).result()
                    committed = self._catalog.mark_ready(row.key, time.time())
                except (OSError, sqlite3.Error) as e:
                    self._warn_once("land", f"could not keep a remote chunk locally: {e}")
                    self._forget(row)
                    return
                if committed:
                    self._host.put(row.key, payload, buf)
            except (_NoRoom, ChunkError, sqlite3.Error):
                return

    def _drop_damaged(self, row: ChunkRow, err: Exception) -> None:
        """A damaged or missing chunk: a miss from now on, its file kept aside, its stranded tail dropped."""
        vanished = isinstance(err, FileNotFoundError)
        if vanished:
            log.info("chunk %s vanished (evicted elsewhere); treating it as a miss", row.key[:16])
        else:
            self._warn_once(f"damaged:{row.path}", f"chunk file {row.path} is damaged ({err}); moved aside, served as a miss")
            self._disk.quarantine(row.path)
            with self._stats_lock:
                self._stats.corrupt_chunks += 1
        try:
            with self._catalog.transaction() as c:
                rows = Catalog.subtree(c, [row.key])
                if vanished:
                    Catalog.delete(c, [r.key for r in rows])
                    for r in rows:
                        self._disk.remove(r.path)
                        self._host.discard(r.key)
                else:
                    self.bucket.remove_rows(c, rows, "corrupt", time.time())
        except sqlite3.Error as e:
            self._warn_once("drop", f"could not drop a damaged chunk from the catalog: {e}")


def _detached(err: Exception) -> Exception:
    """The same error without its traceback: the frames it holds would keep
    the call's buffers (host pool memory) alive for as long as the error is kept."""
    if isinstance(err, OSError) and err.errno is not None:
        return OSError(err.errno, err.strerror, err.filename)  # OSError picks the subclass from errno
    try:
        return type(err)(str(err))
    except TypeError:
        return RuntimeError(f"{type(err).__name__}: {err}")


class _NoRoom(Exception):
    """Internal: the bucket cannot make room for the next chunk."""
