"""Chunk keys: chained hashes over fixed-width token bytes.

chunk i's key = H(key[i-1] || little-endian uint32 tokens of chunk i), with
key[-1] = H(namespace). The namespace digest covers everything that makes KV
incompatible, so KV is never served to a model, layout or tenant it was not
computed for. Keys depend on nothing in the process (no hash(), no pickle):
every process, replica and machine derives the same ones.

XXH3-128 chains are derived in C++ (_C.chain_keys, csrc/chunk_keys.cpp) in
one call per prompt: lookup runs on the scheduler's thread for every waiting
request, every step. chunk_keys_py is the definition they must match byte for
byte (and sha256's path). Runs on the caller's thread; no state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash

from . import _C
from .errors import TokensError, InputError

FORMAT_VERSION = "1"
HASH_ALGORITHMS = ("xxh3_128", "sha256")
TOKEN_DTYPE = np.dtype("<u4")  # the fixed width every key is computed over


def _hasher(name: str):
    if name == "xxh3_128":
        return xxhash.xxh3_128
    if name == "sha256":
        return hashlib.sha256
    raise InputError(f"unknown hash algorithm {name!r}; choose one of {HASH_ALGORITHMS}")


def as_1d_array(value: Any, what: str, error: type[InputError]) -> np.ndarray:
    """A 1-D numpy array from a list, tuple, range, array or torch tensor, or `error` naming the problem."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, no import needed
        value = value.detach().cpu().numpy()
    elif hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):  # cupy: copy to the host
        value = value.get()
    if isinstance(value, (str, bytes)):
        raise error(f"{what} must be a 1-D sequence of integers, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise error(f"{what} must be a 1-D sequence of integers: {e}") from None
    if arr.ndim != 1:
        raise error(f"{what} must be 1-D, got an array of shape {tuple(arr.shape)}")
    return arr


_BOOL_HINT = " (bools are not token ids)"


def _refuse_bools(items: Sequence[Any]) -> None:
    """TokensError naming the first bool (Python's or numpy's) among `items`, if there is one."""
    if not {bool, np.bool_}.isdisjoint(map(type, items)):
        i = next(i for i, t in enumerate(items) if isinstance(t, (bool, np.bool_)))
        raise TokensError(f"tokens must be integers, got {items[i]!r} at index {i}{_BOOL_HINT}")


def as_tokens(tokens: Any) -> np.ndarray:
    """Tokens as a 1-D little-endian uint32 array, or a TokensError naming the problem.

    Accepts lists, tuples, ranges, numpy arrays and torch tensors of integers.
    A list or tuple of plain ints is converted natively (a 128K-token prompt in
    about a tenth of np.asarray's time); anything else in one takes the generic
    path, which names the problem. Bools are no token ids in any form: numpy
    turned [1, True] into int64 [1, 1] while an object array of the same items
    was refused (the native converter takes exact ints only, so the check
    costs only lists it declined).
    """
    if type(tokens) in (list, tuple):  # a subclass may present other items than it stores: numpy asks it
        raw = _C.tokens_u32(tokens)
        if raw is not None:
            return np.frombuffer(raw, dtype=TOKEN_DTYPE)
    arr = as_1d_array(tokens, "tokens", TokensError)
    if arr.size == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if arr.dtype == object:  # Python ints too large for int64, or mixed objects
        items = arr.tolist()
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in items):
            _refuse_bools(items)
            raise TokensError("tokens must be integers, got a sequence with non-integer items")
        lo, hi = min(items), max(items)
        if lo < 0 or hi > 0xFFFFFFFF:
            raise TokensError(f"token ids must lie in [0, 2**32), got values from {lo} to {hi}")
        return np.array(items, dtype=TOKEN_DTYPE)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TokensError(f"tokens must be integers, got dtype {arr.dtype}{_BOOL_HINT if arr.dtype == bool else ''}")
    if isinstance(tokens, (list, tuple)):  # numpy reads bools beside ints as ints
        _refuse_bools(tokens)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 0xFFFFFFFF:
        raise TokensError(f"token ids must lie in [0, 2**32), got values from {lo} to {hi}")
    return np.ascontiguousarray(arr, dtype=TOKEN_DTYPE)


def namespace_digest(params: dict[str, Any], algorithm: str = "xxh3_128") -> bytes:
    """H(canonical JSON of the namespace parameters): the root of every chain."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return _hasher(algorithm)(blob).digest()


MAX_SALT_BYTES = 4096


def salt_digest(salt: str | bytes | None) -> str | None:
    """The tenant salt enters the namespace as a digest; the salt itself is never stored.

    Rules: None is no salt; a str counts as its UTF-8 bytes (so "t1" and b"t1"
    are one tenant); bytes, bytearray and memoryview count as their bytes; an
    empty one is no salt (as vLLM treats an empty cache_salt). Any other type
    (an int would be a byte count to bytes()) and more than 4096 bytes raise
    InputError.
    """
    if salt is None:
        return None
    if isinstance(salt, str):
        try:
            raw = salt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"salt is not encodable as UTF-8: {e}") from None
    elif isinstance(salt, (bytes, bytearray, memoryview)):
        raw = bytes(salt)
    else:
        raise InputError(f"salt must be str, bytes or None, got {type(salt).__name__}")
    if not raw:
        return None
    if len(raw) > MAX_SALT_BYTES:
        raise InputError(f"salt is {len(raw)} bytes; at most {MAX_SALT_BYTES} are allowed (pass a digest)")
    return hashlib.sha256(b"pykvstore-salt\0" + raw).hexdigest()


def _chunk_tokens(chunk_tokens: int) -> int:
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, (int, np.integer)):
        raise InputError(f"chunk_tokens must be an integer, got {type(chunk_tokens).__name__}")
    if chunk_tokens <= 0:
        raise InputError(f"chunk_tokens must be positive, got {chunk_tokens}")
    return int(chunk_tokens)


def _one_dim(tokens: np.ndarray) -> np.ndarray:
    """Both derivations read 1-D tokens only: over a 2-D array the native chain would hash
    every element and the reference count rows, so their keys would differ."""
    if tokens.ndim != 1:
        raise TokensError(f"tokens must be 1-D, got an array of shape {tuple(tokens.shape)}")
    return tokens


def _token_bytes(tokens: np.ndarray) -> np.ndarray:
    """`tokens` as contiguous little-endian uint32 (a copy only when they are not already)."""
    if tokens.dtype != TOKEN_DTYPE or not tokens.flags.c_contiguous:
        tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
    return tokens


def chunk_keys_py(root: bytes, tokens: np.ndarray, chunk_tokens: int, algorithm: str = "xxh3_128") -> list[bytes]:
    """The reference derivation, in Python: the definition chunk_keys must match byte for byte.

    sha256 keys always take this path; tests and benchmarks compare the native
    XXH3-128 chain with it.
    """
    chunk_tokens = _chunk_tokens(chunk_tokens)
    tokens = _one_dim(tokens)
    new = _hasher(algorithm)
    data = memoryview(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
    step = chunk_tokens * TOKEN_DTYPE.itemsize
    keys: list[bytes] = []
    prev = root
    for off in range(0, (len(tokens) // chunk_tokens) * step, step):
        h = new(prev)
        h.update(data[off : off + step])
        prev = h.digest()
        keys.append(prev)
    return keys


def chunk_keys(root: bytes, tokens: np.ndarray, chunk_tokens: int, algorithm: str = "xxh3_128") -> list[bytes]:
    """Chained keys of the full chunks of `tokens` (a partial last chunk gets none).

    XXH3-128 chains are derived natively in one call (_C.chain_keys); the
    bytes are those of chunk_keys_py.
    """
    chunk_tokens = _chunk_tokens(chunk_tokens)
    if algorithm != "xxh3_128":
        return chunk_keys_py(root, tokens, chunk_tokens, algorithm)
    if chunk_tokens > len(_one_dim(tokens)):  # no full chunk (and chunk_bytes might not fit a size_t)
        return []
    return _C.chain_keys(bytes(root), _token_bytes(tokens), chunk_tokens * TOKEN_DTYPE.itemsize, False)


def chunk_keys_hex(root: bytes, tokens: np.ndarray, chunk_tokens: int, algorithm: str = "xxh3_128") -> list[str]:
    """chunk_keys as lower-case hex str, the form the catalog and the chunk paths use.

    The lookup path: for XXH3-128 one native call returns the str objects
    (a 128K-token prompt's 512 keys in tens of microseconds, where hashing
    and .hex() in Python took 0.15 ms).
    """
    chunk_tokens = _chunk_tokens(chunk_tokens)
    if algorithm != "xxh3_128":
        return [k.hex() for k in chunk_keys_py(root, tokens, chunk_tokens, algorithm)]
    if chunk_tokens > len(_one_dim(tokens)):  # no full chunk (and chunk_bytes might not fit a size_t)
        return []
    return _C.chain_keys(bytes(root), _token_bytes(tokens), chunk_tokens * TOKEN_DTYPE.itemsize, True)


def hex_keys(keys: Sequence[bytes]) -> list[str]:
    return [k.hex() for k in keys]
