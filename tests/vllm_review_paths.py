"""Drives vLLM's own Scheduler with the connector, for tests/test_review_session3.py.

    python vllm_review_paths.py MODEL_DIR WORKDIR   # with the vLLM venv's Python

vLLM's Scheduler (its config objects, its KV cache manager, its connector
instance) schedules a request whose prompt the bucket holds, is made to
preempt it (reset_prefix_cache with reset_running_requests, as the
/reset_prefix_cache endpoint does) and schedules it again: the step that
resumes it must carry the load its lookup promised, or vLLM computes from
blocks that hold no KV. No engine step runs; the connector metadata is what
the worker would be handed. Prints one line, RESULT {json}.
"""

import json
import os
import random
import sys
import time
import types

import torch
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.engine.arg_utils import EngineArgs
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from pykvstore.integrations.vllm import PyKVStoreConnector, PyKVStoreMetadata, _Transfer

model, work = sys.argv[1:3]
if not os.path.exists(os.path.join(model, "config.json")):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from vllm_engine import make_model  # the tiny model the other vLLM tests use

    make_model(model)

bucket = os.path.join(work, "bucket")
extra = {"bucket": bucket, "chunk_tokens": 256, "async_store": False}
cfg = EngineArgs(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=4096,
                 kv_cache_memory_bytes=64 << 20, kv_transfer_config=KVTransferConfig(
                     kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
                     kv_role="kv_both", kv_connector_extra_config=extra)).create_engine_config()
block = cfg.cache_config.block_size
out: dict = {"block_size": block}

# The bucket holds the prompt's first 512 tokens (2 chunks), stored through the worker side.
rnd = random.Random(0)
prompt = [rnd.randrange(512) for _ in range(600)]
layers = [f"model.layers.{i}.self_attn.attn" for i in range(2)]
torch.manual_seed(0)
caches = {name: torch.randn(64, 2, block, 64) for name in layers}  # BHTC, vLLM's CPU layout
w = PyKVStoreConnector(cfg, KVConnectorRole.WORKER, None)
w.register_kv_caches(caches)
w.bind_connector_metadata(PyKVStoreMetadata(stores=[_Transfer("seed", prompt, list(range(512 // block)), None)]))
w.wait_for_save()
w.clear_connector_metadata()
out["held"] = w._store(None).lookup(prompt)
w.shutdown()

spec = FullAttentionSpec(block_size=block, num_kv_heads=2, head_size=32, dtype=torch.float32)
# The scheduler reads the block count and the groups; the tensors are the worker's.
kv_cache_config = KVCacheConfig(num_blocks=64, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(layers, spec)])
cfg.cache_config.num_gpu_blocks = 64
sched = Scheduler(cfg, kv_cache_config, StructuredOutputManager(cfg), block_size=block)
out["connector"] = type(sched.connector).__name__


def loads(output) -> list:
    meta = output.kv_connector_metadata
    return [{"req": t.req_id, "start": t.start, "end": t.end, "blocks": len(t.block_ids),
             "background": t.background} for t in meta.loads]


hash_fn = get_hash_fn_by_name(cfg.cache_config.prefix_caching_hash_algo)  # as vLLM's EngineCore sets it up
init_none_hash(hash_fn)
sched.add_request(Request("r1", prompt, SamplingParams(max_tokens=4), None,
                          block_hasher=get_request_block_hasher(block, hash_fn)))
first = sched.schedule()
out["first"] = {"new": [r.req_id for r in first.scheduled_new_reqs], "loads": loads(first),
                "computed": sched.requests["r1"].num_computed_tokens}
sched.reset_prefix_cache(reset_running_requests=True)  # preempts r1: its blocks are freed
again = sched.schedule()
out["resumed"] = {"new": [r.req_id for r in again.scheduled_new_reqs],
                  "resumed": sorted(again.scheduled_cached_reqs.resumed_req_ids), "loads": loads(again),
                  "scheduled_tokens": again.num_scheduled_tokens.get("r1"),
                  "sync_loads": again.has_sync_kv_loads}  # the worker then loads before the forward pass
# The worker runs the resumed step's loads: the blocks vLLM gave r1 hold the stored KV before the forward pass.
fresh = {name: torch.zeros_like(c) for name, c in caches.items()}
w = PyKVStoreConnector(cfg, KVConnectorRole.WORKER, None)
w.register_kv_caches(fresh)
w.bind_connector_metadata(again.kv_connector_metadata)
w.start_load_kv(types.SimpleNamespace(attn_metadata={"x": None}))
w.clear_connector_metadata()
got = [t.block_ids[: 512 // block] for t in again.kv_connector_metadata.loads]
out["resumed"]["kv_loaded"] = bool(got) and all(torch.equal(fresh[n][got[0]], caches[n][: 512 // block])
                                                for n in layers)
out["resumed"]["failed"] = sorted(w.get_block_ids_with_load_errors())
w.shutdown()
sched.connector.shutdown()
print("RESULT " + json.dumps(out))
