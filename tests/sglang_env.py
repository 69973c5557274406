"""Real SGLang (0.5.23, its own venv, `make sglang-env`) on the CPU, for the HiCache backend tests and bench.

Import this module before any SGLang module. It builds SGLang's own objects:
the storage config, real host KV pools (MHATokenToKVPoolHost /
MLATokenToKVPoolHost over CPU tensors), the backend through
StorageBackendFactory, and a "controller" on which SGLang's own
HiCacheController methods run unbound (`_storage_hit_query`, `_page_backup`,
`_page_transfer`, with the page get/set functions SGLang's attach selects).

One stand-in, for an import only: SGLang's configs package imports
multimodal model configs that import torchvision at module level; no CPU
torchvision build for torch 2.13 is on the package index here (PyPI's is CUDA
and does not load beside the CPU torch). A placeholder `torchvision` module
lets those unrelated config modules import; nothing in the cache path uses it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import queue
import sys
import types
from types import SimpleNamespace


def _torchvision_placeholder() -> None:
    try:
        import torchvision  # noqa: F401  (a working torchvision: nothing to do)
        return
    except Exception:
        pass
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cached False before the placeholder exists

    class _Any:
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return _Any()

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Any()

        def __mro_entries__(self, bases):
            return (object,)

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            m = types.ModuleType(spec.name)
            m.__path__ = []

            def attr(name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return _Any()

            m.__getattr__ = attr
            return m

        def exec_module(self, module):
            pass

    sys.modules.pop("torchvision", None)
    sys.meta_path.append(_Finder())


_torchvision_placeholder()

import torch  # noqa: E402
from sglang.srt.managers.cache_controller import HiCacheController, PrefetchOperation, StorageOperation  # noqa: E402
from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo, MLABufferInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheFile, HiCacheStorage, HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.storage import StorageBackendFactory  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402

__all__ = ["HiCacheController", "HiCacheFile", "HiCacheStorage", "HiCacheStorageConfig", "PrefetchOperation", "StorageBackendFactory",
           "StorageOperation", "backend", "controller", "mha_pool", "mla_pool", "page_hashes", "storage_config"]


def _budget(nbytes: int):
    """SGLang's own budget scope, booked with what the pool needs: its default check takes the
    machine's free memory less a fixed reserve, which a busy shared test machine may not have."""
    return host_memory_budget_scope(nbytes + (64 << 20))


def mha_pool(layers: int, heads: int, head_dim: int, page_size: int, pages: int, layout: str = "page_first",
             dtype: torch.dtype = torch.bfloat16) -> MHATokenToKVPoolHost:
    """SGLang's MHA host pool over CPU tensors, `pages` pages (+ SGLang's padding page)."""
    dev_tokens = page_size * 2  # the device pool only lends its geometry and pointer tables
    k = tuple(torch.zeros(dev_tokens + page_size, heads, head_dim, dtype=dtype) for _ in range(layers))
    v = tuple(torch.zeros(dev_tokens + page_size, heads, head_dim, dtype=dtype) for _ in range(layers))
    ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)  # noqa: E731
    info = MHABufferInfo(buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs(k), v_data_ptrs=ptrs(v), layout=KVBufferLayout.NHD),
                         page_size=page_size, head_num=heads, head_dim=head_dim, v_head_dim=head_dim, dtype=dtype,
                         device=torch.device("cpu"))
    with _budget(2 * layers * heads * head_dim * dtype.itemsize * pages * page_size):
        pool = MHATokenToKVPoolHost(info, 1.0, 0, page_size, layout, pin_memory=False, device="cpu",
                                    device_capacity_tokens=dev_tokens, start_layer=0, end_layer=layers,
                                    host_token_capacity=pages * page_size)
    pool._test_keepalive = (k, v)
    return pool


def mla_pool(layers: int, kv_lora_rank: int, rope_dim: int, page_size: int, pages: int, layout: str = "page_first",
             dtype: torch.dtype = torch.bfloat16) -> MLATokenToKVPoolHost:
    """SGLang's MLA host pool over CPU tensors (latent width kv_lora_rank + rope_dim)."""
    dev_tokens = page_size * 2
    width = kv_lora_rank + rope_dim
    bufs = tuple(torch.zeros(dev_tokens + page_size, 1, width, dtype=dtype) for _ in range(layers))
    info = MLABufferInfo(buffers=bufs, data_ptrs=torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
                         layer_indices=tuple(range(layers)), device_layer_num=layers, page_size=page_size,
                         kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim, kv_cache_dim=width, dtype=dtype,
                         device=torch.device("cpu"))
    with _budget(layers * width * dtype.itemsize * pages * page_size):
        pool = MLATokenToKVPoolHost(info, 1.0, 0, page_size, layout, pin_memory=False, device="cpu",
                                    device_capacity_tokens=dev_tokens, start_layer=0, end_layer=layers,
                                    target_layer_num=layers, host_token_capacity=pages * page_size)
    pool._test_keepalive = bufs
    return pool


def storage_config(model: str = "meta-llama/Llama-3-8B", tp_rank: int = 0, tp_size: int = 1, layout: str = "page_first",
                   extra: dict | None = None, mla: bool = False) -> HiCacheStorageConfig:
    """The config SGLang's controller generates (`_generate_storage_config`) for one rank."""
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                                is_mla_model=mla, enable_storage_metrics=True,
                                is_page_first_layout=layout == "page_first", model_name=model,
                                extra_config=dict(extra or {}))


def backend(kind: str, pool, bucket: str, model: str = "meta-llama/Llama-3-8B", tp_rank: int = 0, tp_size: int = 1,
            mla: bool = False, **options):
    """A backend built as SGLang's attach builds it: the factory, then register_mem_pool_host.

    kind "pykvstore": `dynamic` with the module path; kind "file": SGLang's HiCacheFile.
    """
    if kind == "pykvstore":
        extra = {"backend_name": "pykvstore", "module_path": "pykvstore.integrations.sglang",
                 "class_name": "PyKVStoreHiCache", "interface_v1": 1, "bucket": bucket, **options}
        cfg = storage_config(model, tp_rank, tp_size, pool.layout, extra, mla)
        b = StorageBackendFactory.create_backend("dynamic", cfg, pool)
    else:
        cfg = storage_config(model, tp_rank, tp_size, pool.layout, {"file_storage_path": bucket, **options}, mla)
        b = StorageBackendFactory.create_backend("file", cfg, pool)
    b.register_mem_pool_host(pool)
    return b, cfg


def controller(b, cfg, pool) -> SimpleNamespace:
    """The state SGLang's HiCacheController methods read, with the page get/set functions its
    attach_storage_backend selects (zero-copy v1 for `dynamic` + interface_v1, generic otherwise)."""
    c = SimpleNamespace(storage_backend=b, storage_config=cfg, storage_host_pool=pool, mem_pool_host=pool,
                        page_size=pool.page_size, prefetch_sync_queue=queue.Queue())
    v1 = bool((cfg.extra_config or {}).get("interface_v1", 0))
    get_fn = HiCacheController._page_get_zero_copy if v1 else HiCacheController._generic_page_get
    set_fn = HiCacheController._page_set_zero_copy if v1 else HiCacheController._generic_page_set
    c.page_get_func = lambda *a, **k: get_fn(c, *a, **k)
    c.page_set_func = lambda *a, **k: set_fn(c, *a, **k)
    c.page_transfer_kv_batch = lambda *a, **k: HiCacheController._page_transfer_kv_batch(c, *a, **k)
    c._page_transfer_kv_batch = c.page_transfer_kv_batch
    c.backup = lambda op: HiCacheController._page_backup(c, op)
    c.hit_query = lambda op: HiCacheController._storage_hit_query(c, op)
    c.transfer = lambda op: HiCacheController._page_transfer(c, op)
    return c


def page_hashes(tokens: list[int], page_size: int) -> list[str]:
    """SGLang's storage page hashes of `tokens` (what its controller hands the backend)."""
    return get_storage_hash_str(tokens, None, page_size=page_size)
