"""The vLLM connector's scheduler side: what to load for a request, when, and what to store.

Runs in vLLM's engine-core process, on its scheduling thread, with token ids
and block ids only (no tensors). For each waiting request it asks the bucket
how many prompt tokens beyond vLLM's own prefix cache it holds (`lookup`),
decides where the load runs, and at each step tells the worker (through the
step's connector metadata) which requests to load and which finished prefills
to store.

A load larger than "inline_load" (default 16 MiB) runs in the background: its
request waits (WAITING_FOR_REMOTE_KVS) while a store thread loads it, other
requests keep running, and vLLM schedules it in the step after the load is
reported. A smaller one runs inside the step that schedules its request,
before the forward pass, so the request computes its new tokens in that same
step: on the loaded server of bench_serving the loads took 3-20 ms while the
step in flight, which a background load waits out, took 300-400 ms.
"async_load": true or false puts every load in the background or in the step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

    from ..layout import Geometry
    from ..store import KVStore

log = logging.getLogger("pykvstore")
_INLINE_LOAD = "16MiB"  # loads up to this run inside the step (async_load "auto")


@dataclass
class _Transfer:
    req_id: str
    tokens: list[int]
    block_ids: list[int]
    salt: Optional[str]
    start: int = 0  # tokens before it are already in vLLM's blocks (loads only)
    end: int = 0  # tokens to load
    background: bool = False  # loads: asynchronous (reported through get_finished)


@dataclass
class PyKVStoreMetadata(KVConnectorMetadata):
    loads: list[_Transfer] = field(default_factory=list)
    stores: list[_Transfer] = field(default_factory=list)


class SchedulerSide:
    """PyKVStoreConnector's scheduler-side calls (a mixin: the connector's __init__ sets the state they share).

    State, all keyed by request id: `_local` (tokens vLLM's own cache had),
    `_salt`, `_background` (the last lookup's answer: load in the background),
    `_to_load` (in-step loads: tokens to load) and `_load_prompt` (their
    prompts), `_pending` (prompts not yet stored, with their blocks);
    `_background_loads` waits for the next step's metadata.
    """

    _options: dict[str, Any]
    _geometry: "Geometry"
    _async_load: Any  # True, False or "auto"
    _inline_load: int
    _local: dict[str, int]
    _salt: dict[str, Optional[str]]
    _background: dict[str, bool]
    _to_load: dict[str, int]
    _load_prompt: dict[str, list[int]]
    _pending: dict[str, dict[str, Any]]
    _background_loads: list[_Transfer]
    _store: Callable[[Optional[str]], "KVStore"]  # the tenant's store (the connector's)

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int, bool]:
        prompt = list(request.prompt_token_ids or [])
        salt = getattr(request, "cache_salt", None)
        try:
            held = self._store(salt).lookup(prompt)  # lookup never raises for I/O; a miss is 0
        except Exception as e:  # a bucket that cannot be opened: vLLM computes, the scheduler goes on
            log.warning("pykvstore lookup for %s failed: %r", request.request_id, e)
            held = 0
        usable = min(held, len(prompt) - 1)  # vLLM computes at least the last prompt token
        self._local[request.request_id] = num_computed_tokens
        self._salt[request.request_id] = salt
        new = max(0, usable - num_computed_tokens)
        background = bool(new) and self._in_background(num_computed_tokens, num_computed_tokens + new)
        self._background[request.request_id] = background
        return new, background

    def _in_background(self, start: int, end: int) -> bool:
        """Whether a load of tokens [start, end) runs in the background ("auto": when the
        chunks it reads, whole ones from start's on, are larger than inline_load).

        A background load costs its request at least the rest of the step in
        flight; a load in the step costs every running request its duration.
        """
        if self._async_load != "auto":
            return bool(self._async_load)
        ct = self._options["chunk_tokens"]
        return self._geometry.chunk_bytes(ct) * (-(-end // ct) - start // ct) > self._inline_load

    def update_state_after_alloc(self, request: "Request", blocks: Any, num_external_tokens: int) -> None:
        if num_external_tokens <= 0:
            return
        rid = request.request_id
        end = self._local.get(rid, 0) + num_external_tokens
        if not self._background.pop(rid, False):  # loaded in the step that schedules the request
            self._to_load[rid] = end
            # A preempted request vLLM resumes comes in the step's cached requests, without its prompt:
            # keep the request's own list (copied only if that happens; a new request brings its prompt).
            self._load_prompt[rid] = request.prompt_token_ids or []
            return
        # The request waits for its KV; the worker loads it in the background.
        self._background_loads.append(_Transfer(rid, list(request.prompt_token_ids or []),
                                                list(blocks.get_block_ids()[0]), self._salt.get(rid),
                                                start=self._local.get(rid, 0), end=end, background=True))

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = PyKVStoreMetadata()
        meta.loads, self._background_loads = self._background_loads, []
        ct = self._options["chunk_tokens"]
        for new in scheduler_output.scheduled_new_reqs:
            prompt = list(new.prompt_token_ids or [])
            blocks = list(new.block_ids[0])
            salt = self._salt.get(new.req_id)
            end = self._to_load.pop(new.req_id, 0)
            self._load_prompt.pop(new.req_id, None)
            if end:
                meta.loads.append(_Transfer(new.req_id, prompt, blocks, salt,
                                            start=self._local.get(new.req_id, 0), end=end))
            if len(prompt) >= ct:
                self._pending[new.req_id] = {"prompt": prompt, "blocks": blocks, "salt": salt,
                                             "computed": new.num_computed_tokens}
            self._check_complete(new.req_id, new.num_computed_tokens, scheduler_output, meta)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            end = self._to_load.pop(req_id, 0) if req_id in cached.resumed_req_ids else 0
            if end and cached.new_block_ids[i] is not None:  # resumed after preemption: its blocks are all new
                prompt = list(self._load_prompt.pop(req_id, []))
                meta.loads.append(_Transfer(req_id, prompt, list(cached.new_block_ids[i][0]), self._salt.get(req_id),
                                            start=self._local.get(req_id, 0), end=end))
            p = self._pending.get(req_id)
            if p is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if new_blocks is not None:
                if req_id in cached.resumed_req_ids:
                    p["blocks"] = list(new_blocks[0])
                else:
                    p["blocks"] += list(new_blocks[0])
            self._check_complete(req_id, cached.num_computed_tokens[i], scheduler_output, meta)
        return meta

    def _check_complete(self, req_id: str, computed: int, out: "SchedulerOutput", meta: PyKVStoreMetadata) -> None:
        """Stores a prompt once this step finishes its prefill (its KV exists after the forward pass)."""
        p = self._pending.get(req_id)
        if p is None:
            return
        if computed + out.num_scheduled_tokens.get(req_id, 0) >= len(p["prompt"]):
            meta.stores.append(_Transfer(req_id, p["prompt"], list(p["blocks"]), p["salt"]))
            del self._pending[req_id]

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, Optional[dict]]:
        """Its blocks may go at once: a store copied its KV out at the end of its step."""
        rid = request.request_id
        for d in (self._local, self._salt, self._to_load, self._load_prompt, self._pending, self._background):
            d.pop(rid, None)
        return False, None
