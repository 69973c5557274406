"""HF transformers: keep the KV of a prompt prefix from a `DynamicCache`, and
restore it as a `DynamicCache` that `generate` continues from.

Runs in the process that runs the model. A DynamicCache layer holds K and V
as (batch, kv heads, tokens, head dim); batch 1 is supported. The chunks are
the store's canonical format, so they are interchangeable with any other
engine's for the same model, geometry and dtype.

    cache = model(prompt_ids, use_cache=True).past_key_values
    save_prefix(store, prompt_ids[0], cache, tag="support-bot/system-v3")
    ...
    restored, n = load_prefix(store, new_ids[0], model.config, dtype=torch.float32)
    model.generate(new_ids, past_key_values=restored, ...)   # recomputes only tokens n..
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import InputError
from ..keys import as_tokens
from ..layout import Geometry, PagedKV
from ..store import KVStore

DIMS = "2HBTD"  # one layer: K|V, kv head, chunk, token in chunk, head channel


def geometry_of(config: Any, dtype: torch.dtype) -> Geometry:
    """The KV geometry of a transformers model config (GQA: num_key_value_heads)."""
    try:
        layers = config.num_hidden_layers
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    except AttributeError as e:
        raise InputError(f"config does not describe an attention model's KV: {e}") from None
    return Geometry(layers=layers, heads=heads, head_dim=head_dim, dtype=dtype)


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise InputError(f"expected a transformers DynamicCache, got {type(cache).__name__}")
    out = []
    for i, layer in enumerate(layers):
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None or k.dim() != 4:
            raise InputError(f"layer {i} of the cache holds no (batch, heads, tokens, head_dim) keys and values")
        if k.shape[0] != 1:
            raise InputError(f"only batch 1 is supported, the cache has batch {k.shape[0]}")
        out.append((k, v))
    return out


def save_prefix(store: KVStore, tokens: Any, cache: Any, *, tag: Optional[str] = None, **put_options: Any) -> int:
    """Stores the full chunks of `tokens` whose KV `cache` holds; returns the tokens held after the call."""
    toks = as_tokens(tokens)
    layers = _layers(cache)
    ct = store.chunk_tokens
    n = min(len(toks), layers[0][0].shape[2]) // ct * ct
    if n == 0:
        return 0
    kv = [torch.stack([k[0, :, :n], v[0, :, :n]]).unflatten(2, (n // ct, ct)) for k, v in layers]
    return store.put(toks[:n], PagedKV(kv, dims=DIMS), list(range(n // ct)), tag=tag, **put_options)


def load_prefix(store: KVStore, tokens: Any, config: Any, dtype: torch.dtype = torch.float32,
                device: Any = "cpu") -> tuple[Any, int]:
    """A DynamicCache holding the longest prefix of `tokens` the bucket has, and its length (0: empty cache)."""
    from transformers import DynamicCache

    toks = as_tokens(tokens)
    g = geometry_of(config, dtype)
    ct = store.chunk_tokens
    n_chunks = len(toks) // ct
    cache = DynamicCache(config=config)
    if n_chunks == 0:
        return cache, 0
    kv = [torch.empty(2, g.heads, n_chunks, ct, g.head_dim, dtype=dtype, device=device) for _ in range(g.layers)]
    loaded = store.get(toks[: n_chunks * ct], PagedKV(kv, dims=DIMS), list(range(n_chunks)))
    if loaded == 0:
        return cache, 0
    for i, t in enumerate(kv):
        flat = t.flatten(2, 3)[:, :, :loaded]  # (2, heads, tokens, head_dim)
        cache.update(flat[0].unsqueeze(0).contiguous(), flat[1].unsqueeze(0).contiguous(), i)
    return cache, loaded
