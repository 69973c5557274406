"""A vLLM KV connector that does nothing: the cost of vLLM's connector plumbing alone.

bench_serving runs it beside "no connector" and pykvstore on zero-reuse
traffic. With any connector configured vLLM calls the connector's hooks every
step on both sides and carries a connector output from the worker to the
scheduler; this one answers "nothing held" and stores nothing, so what it
costs against no connector is vLLM's, and what pykvstore costs beyond it is
the store's.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorMetadata


class NullConnector(KVConnectorBase_V1):
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        return 0, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        return None

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        return KVConnectorMetadata()

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        return None

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return None

    def wait_for_save(self) -> None:
        return None
