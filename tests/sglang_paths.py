"""Runs the SGLang HiCache backend's other paths with real SGLang (its venv) for tests/test_sglang_paths.py.

    python sglang_paths.py WORKDIR

SGLang's own controller methods without `interface_v1` (its generic page
get/set, one flat page at a time), the config SGLang's attach hands over with
options the backend must refuse, a backend used before SGLang registers its
host pool, pipeline stages, storage metrics off, and the owner's clear().
Prints one line, RESULT {json}.
"""

import dataclasses
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sglang_env as se  # noqa: E402
import sglang_worker as sw  # noqa: E402
import torch  # noqa: E402

L, H, D, P, PAGES = sw.L, sw.H, sw.D, sw.P, sw.PAGES
work = sys.argv[1]
warnings: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


logging.getLogger("pykvstore").addHandler(_Collect())
out: dict = {}

# -- SGLang's generic page path (no interface_v1): its _generic_page_set / _generic_page_get
bucket = os.path.join(work, "generic")
pool, b, c = sw.server(bucket, interface_v1=0)
out["generic_stored"] = sw.store(c, pool, 0)
out["generic_load"] = sw.load(c, pool, 0)
pool2, b2, c2 = sw.server(bucket)  # a v1 server reads the pages the generic path wrote
out["v1_reads_generic"] = sw.load(c2, pool2, 0)
hs = se.page_hashes(sw.prompt(0), P)
out["exists_one"] = [b.exists(hs[0]), b.exists("0" * 64)]
out["empty_calls"] = [b.batch_exists([]), b.batch_get_v1([], torch.arange(0)), b.batch_set([], [])]
warnings.clear()
out["exists_bad_key"] = b.batch_exists([None, hs[1]])  # not a string: 0, never a raise into SGLang
out["exists_bad_key_warned"] = len([m for m in warnings if "batch_exists failed" in m])
# the owner's clear: this backend's pages go, for every server on the bucket
out["clear"] = b.clear()
out["after_clear"] = [b.batch_exists(hs), b2.batch_exists(hs)]
b.close()
b2.close()

# -- a backend SGLang has built but not yet given its host pool: every call a miss, one warning
pool = se.mha_pool(L, H, D, P, 2 * PAGES)
cfg = se.storage_config(extra={"backend_name": "pykvstore", "module_path": "pykvstore.integrations.sglang",
                               "class_name": "PyKVStoreHiCache", "interface_v1": 1,
                               "bucket": os.path.join(work, "early")})
early = se.StorageBackendFactory.create_backend("dynamic", cfg, pool)
warnings.clear()
out["unregistered"] = {"exists": early.batch_exists(hs[:2]), "get_v1": early.batch_get_v1(hs[:2], torch.arange(2 * P)),
                       "get": early.get(hs[0], pool.get_dummy_flat_data_page()), "clear": early.clear(),
                       "store": early.store is None, "stats": early.bucket_stats(),
                       "warned": len([m for m in warnings if "before register_mem_pool_host" in m])}

# -- options SGLang passes through that the backend refuses, by name, before anything is written
bad = {"ttl_mode": {"ttl_mode": "forever"}, "tag": {"tag": 7}, "hash": {"hash": "md5"}, "io_threads": {"io_threads": 0},
       "model": {"model_name": None}, "context_parallel": {"attn_cp_size": 2}}
out["refused"] = {}
for name, change in bad.items():
    extra = {"backend_name": "pykvstore", "module_path": "pykvstore.integrations.sglang",
             "class_name": "PyKVStoreHiCache", "interface_v1": 1, "bucket": os.path.join(work, f"bad-{name}")}
    fields = {k: v for k, v in change.items() if k in ("model_name", "attn_cp_size")}
    extra.update({k: v for k, v in change.items() if k not in fields})
    cfg = dataclasses.replace(se.storage_config(extra=extra), **fields)
    try:
        se.StorageBackendFactory.create_backend("dynamic", cfg, pool)
        out["refused"][name] = None
    except ValueError as e:
        out["refused"][name] = [type(e).__name__, str(e), os.path.exists(extra["bucket"])]
small = se.mha_pool(L, H, D, 2, 8)  # pages of 2 tokens: less than 128 bits of SGLang's page hash per key
try:
    se.backend("pykvstore", small, os.path.join(work, "small-pages"))
    out["small_pages"] = None
except ValueError as e:
    out["small_pages"] = [type(e).__name__, str(e)]

# -- pipeline stages hold other layers: stage 1 never sees stage 0's pages
bucket = os.path.join(work, "pp")
stages = []
for rank in (0, 1):
    p = se.mha_pool(L, H, D, P, 2 * PAGES)
    extra = {"backend_name": "pykvstore", "module_path": "pykvstore.integrations.sglang",
             "class_name": "PyKVStoreHiCache", "interface_v1": 1, "bucket": bucket}
    cfg = dataclasses.replace(se.storage_config(extra=extra), pp_rank=rank, pp_size=2)
    bb = se.StorageBackendFactory.create_backend("dynamic", cfg, p)
    bb.register_mem_pool_host(p)
    stages.append((p, bb, se.controller(bb, cfg, p)))
out["pp_stored"] = sw.store(stages[0][2], stages[0][0], 0)
out["pp"] = [sw.load(cc, p, 0)["hit_tokens"] for p, _, cc in stages]
for _, bb, _ in stages:
    bb.close()

# -- storage metrics off: nothing kept per call; on: pages per call, drained by get_stats
for on in (False, True):
    p = se.mha_pool(L, H, D, P, 2 * PAGES)
    extra = {"backend_name": "pykvstore", "module_path": "pykvstore.integrations.sglang",
             "class_name": "PyKVStoreHiCache", "interface_v1": 1, "bucket": os.path.join(work, f"metrics-{on}")}
    cfg = dataclasses.replace(se.storage_config(extra=extra), enable_storage_metrics=on)
    bb = se.StorageBackendFactory.create_backend("dynamic", cfg, p)
    bb.register_mem_pool_host(p)
    bb.register_mem_pool_host(p)  # registered again (SGLang re-attaching): the first store is closed, not leaked
    sw.store(se.controller(bb, cfg, p), p, 0)
    m = bb.get_stats()
    out[f"metrics_{'on' if on else 'off'}"] = {"backup_pgs": list(m.backup_pgs), "again": list(bb.get_stats().backup_pgs)}
    bb.close()
print("RESULT " + json.dumps(out), flush=True)
