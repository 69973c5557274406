"""SGLang: pykvstore as a HiCache L3 storage backend (tested with sglang 0.5.23).

Load it the way SGLang loads third-party backends:

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "pykvstore",
        "module_path": "pykvstore.integrations.sglang", "class_name": "PyKVStoreHiCache",
        "interface_v1": 1, "bucket": "/data/kvstore", "capacity": "200GiB",
        "tag": "support-bot", "ttl": "7d"}'

SGLang's `StorageBackendFactory` builds it as `PyKVStoreHiCache(storage_config, kwargs)`
on each TP rank's scheduler process, then calls `register_mem_pool_host(host_pool)`.
Its cache controller then drives, on its own threads:
- the prefetch thread: `batch_exists(keys, extra_info)` (leading hits, batches of 128 pages);
- the prefetch I/O thread: `batch_get_v1(keys, host_indices, extra_info)`;
- the backup thread: `batch_set_v1(keys, host_indices, extra_info)`.
With `"interface_v1": 1` the controller uses the v1 calls (pages move between the
host pool and the bucket through the native copier); without it, the generic
`batch_get`/`batch_set` of flat pages, which work too, one page at a time.

Keys. SGLang hands a backend page hashes, never token ids (`extra_info` carries
at most the preceding page hashes): a page's hash chains the hash of the page
before it with the page's tokens, seeded by the request's extra key and cache
salt. So tokens are not reachable, and pykvstore's token-chained keys (which
would let a prefix stored by vLLM be found by SGLang) cannot be computed here.
Each page is one chunk whose key is H(namespace || page hash); the namespace
holds what the page hash does not: model (SGLang's name, with the host pool's
format tag), KV geometry and dtype, page size, TP shard (MLA pages are shared
by all TP ranks, as SGLang's own file backend shares them), pipeline stage, and
an optional `salt`. Chunks are canonical, so a page stored from one host
layout loads into another (page_first and layer_first replicas share pages).

Options in the extra config: bucket (required, or PYKVSTORE_BUCKET), capacity,
tag, ttl, ttl_mode, pin (pin every stored page), salt, revision, hash,
host_capacity (pykvstore's own host tier; 0 by default, SGLang has its host
pool), io_threads (pages in flight per call, default 4).
A call never raises into SGLang: a failed or damaged page is a False for that
page (and logged once), the pages after it still load.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from ..bucket import _UNSET
from ..defaults import parse_flag
from ..errors import InputError
from ..keys import HASH_ALGORITHMS, TOKEN_DTYPE
from ..keys import _hasher as hasher  # the chunk-key hash by name (keys.py has no public one)
from ..sizes import parse_duration, parse_size
from ..store import KVStore
from .sglang_layout import MIN_PAGE_SIZE, HostPoolView, PageKeys, host_pool_view, page_block_ids, page_tokens

log = logging.getLogger("pykvstore")

_SGLANG_KEYS = ("backend_name", "module_path", "class_name", "interface_v1", "interface_v2",
                "hicache_storage_pass_prefix_keys", "tp_lcm_size")
_OPTIONS = ("bucket", "capacity", "tag", "ttl", "ttl_mode", "pin", "salt", "revision", "hash", "host_capacity",
            "io_threads", "model")


_METRICS_KEPT = 10_000  # per-call figures kept between two get_stats calls


class ConfigError(InputError):
    """The backend's extra config is not usable (raised when SGLang attaches it, before anything is written)."""


class PyKVStoreHiCache(HiCacheStorage):
    """A HiCache L3 backend over a pykvstore bucket (one object per TP rank).

    Args:
        storage_config: SGLang's HiCacheStorageConfig; its `extra_config` holds
            the options in the module docstring.
        kwargs: extra arguments SGLang's factory passes (unused).
    """

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None) -> None:
        extra = dict(storage_config.extra_config or {})
        unknown = sorted(set(extra) - set(_SGLANG_KEYS) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown pykvstore option(s) {unknown}; known: {', '.join(_OPTIONS)}")
        bucket = extra.get("bucket") or os.environ.get("PYKVSTORE_BUCKET")
        if not bucket:
            raise ConfigError('the extra config needs "bucket": the bucket directory (or set PYKVSTORE_BUCKET)')
        model = extra.get("model") or storage_config.model_name
        if not model:
            raise ConfigError('SGLang passed no model name: give "model" in the extra config')
        if extra.get("capacity") is not None:
            parse_size(extra["capacity"], "capacity")
        self._ttl = _UNSET if "ttl" not in extra else (None if extra["ttl"] is None else parse_duration(extra["ttl"], "ttl"))
        self._ttl_mode = extra.get("ttl_mode")
        if self._ttl_mode not in (None, "absolute", "sliding"):
            raise ConfigError(f'ttl_mode must be "absolute" or "sliding", got {self._ttl_mode!r}')
        self._tag = extra.get("tag")
        if self._tag is not None and not isinstance(self._tag, str):
            raise ConfigError(f"tag must be a string, got {self._tag!r}")
        if extra.get("hash", "xxh3_128") not in HASH_ALGORITHMS:
            raise ConfigError(f"hash must be one of {HASH_ALGORITHMS}, got {extra['hash']!r}")
        self._pin = parse_flag(str(extra.get("pin", "0")))
        threads = extra.get("io_threads", 4)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"io_threads must be a positive integer, got {threads!r}")
        if storage_config.attn_cp_size > 1 or storage_config.dcp_size > 1:
            raise ConfigError("context-parallel KV shards (attn_cp_size/dcp_size > 1) are not supported yet")
        self.storage_config = storage_config
        self._extra = extra
        self._bucket = str(bucket)
        self._model = str(model)
        self._mla = bool(storage_config.is_mla_model)
        # MLA KV is the same on every TP rank: one shard, written by SGLang's chosen writer only.
        self._tp = (0, 1) if self._mla else (storage_config.tp_rank, storage_config.tp_size)
        self._writer = storage_config.is_storage_writer
        revision = [extra["revision"]] if extra.get("revision") else []
        if storage_config.pp_size > 1:  # another stage holds other layers
            revision.append(f"pp{storage_config.pp_rank}of{storage_config.pp_size}")
        self._revision = ";".join(revision) or None
        self._threads = threads
        self._store: Optional[KVStore] = None
        self._view: Optional[HostPoolView] = None
        self._keys: Optional[PageKeys] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._metrics_lock = threading.Lock()
        self._metrics = {"prefetch_pgs": [], "backup_pgs": [], "prefetch_bandwidth": [], "backup_bandwidth": []}
        self._warned: set[str] = set()

    # --- set-up --------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Opens the bucket for this host pool's geometry (SGLang calls it once, at attach)."""
        super().register_mem_pool_host(mem_pool_host)
        view = host_pool_view(mem_pool_host)
        if view.page_size < MIN_PAGE_SIZE:
            raise ConfigError(f"page size {view.page_size} is below {MIN_PAGE_SIZE}: a page's key would keep less "
                              f"than 128 bits of SGLang's page hash; run SGLang with --page-size >= {MIN_PAGE_SIZE}")
        e = self._extra
        store = KVStore(self._bucket, model=self._model, capacity=e.get("capacity"), salt=e.get("salt"),
                        revision=self._revision, chunk_tokens=view.page_size, hash=e.get("hash", "xxh3_128"),
                        tp_rank=self._tp[0], tp_size=self._tp[1], geometry=view.kv.geometry,
                        host_capacity=e.get("host_capacity", 0))
        # Page keys are computed here in bulk (batch_exists answers 128 pages per query);
        # they must be exactly the store's own, which this checks once.
        ns = store._namespace(view.kv.geometry)
        self._keys = PageKeys(ns.digest, hasher(store.hash), view.page_size)
        self._ns_hex = ns.hex
        if self._keys(["probe"])[1][0] != store.hashes(page_tokens("probe", view.page_size))[0]:
            store.close()
            raise RuntimeError("pykvstore's chunk keys changed: the SGLang backend needs updating")
        disk = store.bucket.disk
        self._path_of = lambda key: disk.abspath(disk.relpath(self._model, self._ns_hex, key))  # noqa: E731
        probe_key = "0123456789abcdef" * 2
        probe, tail = self._path_of(probe_key), f"/01/23/{probe_key}.safetensors"
        self._dir = probe[: -len(tail) + 1] if probe.endswith(tail) else None  # else: the tier's own, slower
        if self._store is not None:
            self.close()
        self._store, self._view = store, view
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="pykvstore-sglang")

    def _chunk_path(self, key: str) -> str:
        """Where the disk tier keeps a chunk (its data/<model>/<namespace>/<k0k1>/<k2k3>/ layout,
        checked against the tier's own path once, at registration)."""
        if self._dir is None:
            return self._path_of(key)
        return f"{self._dir}{key[0:2]}/{key[2:4]}/{key}.safetensors"

    def _ready(self) -> bool:
        if self._store is None:
            self._warn("unregistered", "pykvstore HiCache backend used before register_mem_pool_host; a miss")
            return False
        return True

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    # --- the calls SGLang's controller makes -----------------------------------
    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many leading pages of `keys` the bucket holds (ready, not expired): one catalog query."""
        if not keys or not self._ready():
            return 0
        try:
            # No file for the first page: nothing to load (the catalog is asked only when there may be).
            if not os.path.exists(self._chunk_path(self._keys.key(self._keys.raw(keys[0])))):
                return 0
            bucket = self._store.bucket
            _, ckeys = self._keys(keys)
            return bucket.catalog.ready_prefix_len(ckeys, time.time())
        except Exception as e:  # a cache never crashes its engine
            self._warn("exists", f"pykvstore batch_exists failed, answering 0: {e!r}")
            return 0

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Loads pages into the host pool at `host_indices` (page_size per key); per page, whether it loaded."""
        return self._transfer("get", keys, host_indices)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Stores pages from the host pool at `host_indices`; per page, whether the bucket holds it after the call."""
        if not self._writer:  # SGLang skips backups on MLA replicas that are not the writer
            return [True] * len(keys)
        return self._transfer("set", keys, host_indices)

    def _transfer(self, op: str, keys: List[str], host_indices: Any) -> List[bool]:
        if not keys:
            return []
        if not self._ready():
            return [False] * len(keys)
        t0 = time.perf_counter()
        view, store = self._view, self._store
        try:  # keys and indices are SGLang's input: a bad one is a miss for every page, never a raise
            ids = page_block_ids(host_indices, len(keys), view.page_size, view.kv.num_blocks)
            raw, ckeys = self._keys(keys) if ids is not None else ([], [])
        except Exception as e:
            self._warn(f"input:{op}", f"pykvstore batch_{op}_v1: unusable keys or host indices ({e!r}); nothing moved")
            return [False] * len(keys)
        if ids is None:
            self._warn(f"indices:{op}", f"pykvstore batch_{op}_v1: host indices are not {len(keys)} whole pages "
                                        f"of the host pool; nothing moved")
            return [False] * len(keys)
        toks = [np.frombuffer(r, dtype=TOKEN_DTYPE) for r in raw]
        if op == "get":
            def one(i: int) -> bool:
                return store.get(toks[i], view.kv, ids[i : i + 1]) == view.page_size
        else:
            def one(i: int) -> bool:
                return store.put(toks[i], view.kv, ids[i : i + 1], tag=self._tag, ttl=self._ttl,
                                 ttl_mode=self._ttl_mode) == view.page_size

        def safe(i: int) -> bool:
            try:
                return one(i)
            except Exception as e:  # the page is a miss; SGLang recomputes it
                self._warn(f"{op}:{type(e).__name__}", f"pykvstore batch_{op}_v1 page failed: {e!r}")
                return False

        ok = list(self._pool.map(safe, range(len(keys)))) if len(keys) > 1 else [safe(0)]
        if op == "set" and self._pin:
            try:
                store.bucket.pin([k for k, good in zip(ckeys, ok) if good], True)
            except Exception as e:
                self._warn("pin", f"pykvstore could not pin stored pages: {e!r}")
        self._record(op, sum(ok), time.perf_counter() - t0)
        return ok

    def _record(self, op: str, pages: int, seconds: float) -> None:
        """Per-call figures for get_stats, which SGLang reads only with storage metrics on
        (and then drains): off, nothing is kept; on, at most _METRICS_KEPT per list."""
        if not self.storage_config.enable_storage_metrics:
            return
        name = "prefetch" if op == "get" else "backup"
        nbytes = pages * self._view.kv.geometry.chunk_bytes(self._view.page_size)
        with self._metrics_lock:
            if len(self._metrics[f"{name}_pgs"]) < _METRICS_KEPT:
                self._metrics[f"{name}_pgs"].append(pages)
                self._metrics[f"{name}_bandwidth"].append(nbytes / max(seconds, 1e-9) / 1e9)

    # --- the generic (flat page) interface ----------------------------------------
    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        """Loads one page into `target_location` (a flat page, as SGLang's host pool shapes it); None on a miss."""
        if not self._ready() or target_location is None:
            return None
        try:
            page = self._view.page_kv(target_location)
            toks = page_tokens(key, self._view.page_size)
            return target_location if self._store.get(toks, page, [0]) == self._view.page_size else None
        except Exception as e:
            self._warn("get", f"pykvstore get failed: {e!r}")
            return None

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None, target_sizes: Optional[Any] = None):
        targets = target_locations or [None] * len(keys)
        return [self.get(k, t) for k, t in zip(keys, targets)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        """Stores one flat page `value`."""
        if not self._ready() or value is None:
            return False
        if not self._writer:
            return True
        try:
            page = self._view.page_kv(value.contiguous())
            toks = page_tokens(key, self._view.page_size)
            ok = self._store.put(toks, page, [0], tag=self._tag, ttl=self._ttl,
                                 ttl_mode=self._ttl_mode) == self._view.page_size
            if ok and self._pin:
                self._store.pin(toks)
            return ok
        except Exception as e:
            self._warn("set", f"pykvstore set failed: {e!r}")
            return False

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        return all(self.set(k, v) for k, v in zip(keys, values or [None] * len(keys)))

    # --- owner calls -------------------------------------------------------------
    def clear(self) -> bool:
        """Removes this backend's pages (its model and namespace), pinned ones too."""
        if self._store is None:
            return False
        try:
            ns = self._store._namespace(self._view.kv.geometry).hex
            self._store.bucket.clear(model=self._model, namespace=ns, include_pinned=True)
            return True
        except Exception as e:
            self._warn("clear", f"pykvstore clear failed: {e!r}")
            return False

    def get_stats(self):
        """SGLang's StorageMetrics since the last call (pages and GB/s per call); None without them.
        pykvstore's own view of the bucket is `bucket_stats()`."""
        with self._metrics_lock:
            taken = self._metrics
            self._metrics = {k: [] for k in taken}
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except Exception:
            return None
        m = StorageMetrics()
        for k, v in taken.items():
            setattr(m, k, v)
        return m

    def bucket_stats(self) -> dict[str, Any]:
        """The store's counters and the bucket as every process sees it (capacity, hits, tags, ...)."""
        return self._store.stats().to_dict() if self._store is not None else {}

    @property
    def store(self) -> Optional[KVStore]:
        """The KVStore behind this backend (None until a host pool is registered)."""
        return self._store

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._store is not None:
            self._store.close()
            self._store = None
