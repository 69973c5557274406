"""Where vLLM puts a block's K and V: the dims of the tensors it registers, and its CPU kernel's placement.

vLLM's CPU backend registers [blocks, heads, block_size, 2*head_dim] but its
kernels lay a block out their own way (on x86 without AMX: K channel-major,
then V token-major). At start-up the connector lets that kernel write a probe
block and reads back where each (token, channel) of K and V landed; when the
placement is a plain stride pattern, chunks are converted to and from the
canonical order like any engine's, so transformers or another engine loads
what vLLM stored. When it is not (a tiled AMX layout), chunks carry the vLLM
platform and block size in the namespace ("revision") instead: replicas with
the same setup share them, and nothing else can load them by mistake.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("pykvstore")


def cpu_plane_strides(block_size: int, head_dim: int, dtype: torch.dtype) -> Optional[list[tuple[int, int, int, int]]]:
    """Where vLLM's CPU kernel puts K and V inside a [heads, block_size, 2*head_dim] block.

    Lets the kernel write one probe block twice (keys = token + 1, values =
    -(token + 1); then the same with the channel) and reads back each element's
    token and channel. Returns (offset, token, head, channel) strides per plane
    when the placement is affine, None otherwise or when the probe cannot run.
    Small integers are exact in every KV dtype, so the probe runs in the model's.
    """
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        isa = _get_attn_isa(dtype, block_size, head_dim)
        t_idx = torch.arange(block_size).view(block_size, 1, 1).expand(block_size, 1, head_dim)
        d_idx = torch.arange(head_dim).view(1, 1, head_dim).expand(block_size, 1, head_dim)
        slots = torch.arange(block_size, dtype=torch.int64)
        seen = []
        for idx in (t_idx, d_idx):
            block = torch.zeros((1, 1, block_size, 2 * head_dim), dtype=dtype)
            k_cache, v_cache = block.view(1, 1, 2 * block_size, head_dim).chunk(2, dim=2)
            key = (idx + 1).to(dtype).contiguous()
            torch.ops._C.cpu_attn_reshape_and_cache(key, (-key).contiguous(), k_cache, v_cache, slots, isa)
            seen.append(block.reshape(-1).float())
        tok, ch = seen
        rows = []
        for sign in (1, -1):  # K wrote positive numbers, V negative ones
            where = (sign * tok > 0).nonzero().flatten()
            if len(where) != block_size * head_dim:
                return None
            pos = torch.empty(block_size, head_dim, dtype=torch.long)
            pos[(sign * tok[where]).long() - 1, (sign * ch[where]).long() - 1] = where
            off, st, sd = int(pos[0, 0]), int(pos[1, 0] - pos[0, 0]) if block_size > 1 else 0, int(pos[0, 1] - pos[0, 0])
            want = off + torch.arange(block_size).view(-1, 1) * st + torch.arange(head_dim).view(1, -1) * sd
            if not torch.equal(pos, want):
                return None  # not a stride pattern (tiled): keep vLLM's own bytes
            rows.append((off, st, 2 * block_size * head_dim, sd))
        return rows
    except Exception as e:  # an older or different kernel: fall back to the platform's own namespace
        log.info("could not probe vLLM's CPU KV layout (%r); its chunks stay vLLM-CPU-only", e)
        return None


def infer_dims(t: torch.Tensor, block_size: int, head_dim: int) -> str:
    """The dims string of one layer's KV tensor as vLLM registered it."""
    s = tuple(t.shape)
    if len(s) == 5 and s[0] == 2:
        return "2BTHD"
    if len(s) == 5 and s[1] == 2:
        return "B2THD"
    if len(s) == 4 and s[3] == 2 * head_dim:
        if s[2] == block_size:
            return "BHTC"
        if s[1] == block_size:
            return "BTHC"
    if len(s) == 3 and s[1] == block_size:
        return "BTD"  # MLA latent
    raise ValueError(f"unrecognised vLLM KV layout {s} (block size {block_size}, head dim {head_dim})")
