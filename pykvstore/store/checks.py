"""Input checks of KVStore's constructor and calls: a clear InputError before anything is written.

Runs on the caller's thread, before a call is queued for the put or get thread.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import defaults
from ..errors import InputError
from ..keys import HASH_ALGORITHMS, as_tokens
from ..layout import Geometry, PagedKV
from ..chunk_file import MAX_MODEL_INPUT
from ..sizes import parse_size


def check_store_args(model: Any, chunk_tokens: Any, hash: Any, tp_rank: Any, tp_size: Any,  # noqa: A002
                     geometry: Optional[Geometry], host_capacity: Any) -> int:
    """Checks KVStore's arguments; returns the host tier's capacity in bytes."""
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"model must be a non-empty string, got {model!r}")
    check_name(model, "model", MAX_MODEL_INPUT)
    if model.strip() in (".", ".."):
        raise InputError(f"model {model!r} cannot name a directory of the bucket; use the model's id")
    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens <= 0:
        raise InputError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if hash not in HASH_ALGORITHMS:
        raise InputError(f"hash must be one of {HASH_ALGORITHMS}, got {hash!r}")
    if not (isinstance(tp_size, int) and isinstance(tp_rank, int) and tp_size >= 1 and 0 <= tp_rank < tp_size):
        raise InputError(f"tp_rank must lie in [0, tp_size) with tp_size >= 1, got {tp_rank}/{tp_size}")
    if geometry is not None and not isinstance(geometry, Geometry):
        raise InputError(f"geometry must be a pykvstore.Geometry, got {type(geometry).__name__}")
    if host_capacity is None:
        return defaults.get("host_capacity")
    if host_capacity == 0 and not isinstance(host_capacity, bool):
        return 0  # no host tier: every get reads the bucket
    return parse_size(host_capacity, "host capacity")


def check_name(value: str, what: str, limit: int) -> None:
    """A model id or tag: at most `limit` bytes of UTF-8, no NUL or other control characters."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not encodable as UTF-8: {e}") from None
    if size > limit:
        raise InputError(f"{what} is {size} bytes long; at most {limit} are allowed (it is stored in every "
                         f"chunk's header)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InputError(f"{what} {value[:40]!r} contains a control character")


def check_call(chunk_tokens: int, tokens: Any, cache: PagedKV, block_ids: Any) -> tuple[Any, torch.Tensor, int]:
    """(tokens, block ids, full chunks) of a put or get. The ids used must not repeat: a load would
    leave only the last chunk in a shared block, a store would keep one block's KV for two places."""
    if not isinstance(cache, PagedKV):
        raise InputError(f"cache must be a pykvstore.PagedKV, got {type(cache).__name__}")
    if chunk_tokens % cache.block_size:
        raise InputError(
            f"chunk_tokens {chunk_tokens} is not a multiple of the engine block size {cache.block_size}")
    toks = as_tokens(tokens)
    n = len(toks) // chunk_tokens
    ids = cache.block_ids(block_ids, n * (chunk_tokens // cache.block_size), distinct=True)
    return toks, ids, n


def check_start(start: Any, toks: Any) -> None:
    """A get's `start`: an integer in [0, len(tokens)]."""
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(toks):
        raise InputError(f"start must be an integer in [0, {len(toks)}] (the token count), got {start!r}")
