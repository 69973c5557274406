"""The on-disk chunk: one safetensors file holding one tensor, "kv".

    [8-byte little-endian header length N][JSON header, space-padded][payload]

N is chosen so the payload starts at a multiple of 4096 bytes (safetensors
allows trailing spaces in the header), which lets O_DIRECT and mmap read the
payload in place. The tensor has the canonical chunk shape
(layers, planes, tokens, heads, head_dim); `__metadata__` carries the format
version, model, namespace, chunk key and parent key, token count, chunk index,
payload checksum, creation time, tag and the namespace parameters.

The checksum is XXH3-64 of the payload, named by `checksum_algo`; a header
without that field is from before it and holds XXH64. The I/O threads compute
XXH3-64 as they read; an XXH64 chunk is verified again here, more slowly.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Optional

from . import _C, strict_json
from .errors import ChunkError
from .keys import FORMAT_VERSION

TENSOR = "kv"
PAYLOAD_ALIGN = 4096
MAX_HEADER = 1 << 20  # a longer header is garbage, not a chunk
_CHECKSUM_PLACEHOLDER = "0" * 16
_ST_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1}


CHECKSUM_ALGO = "xxh3-64"  # what the native engine computes while it reads
_LEGACY_ALGO = "xxh64"


def checksum(payload: Any) -> str:
    """XXH3-64 of the payload as 16 hex digits (fixed width: the header length never changes)."""
    return format_checksum(_C.xxh3_64(payload))


def format_checksum(value: int) -> str:
    return f"{value:016x}"


def payload_checksum_ok(hdr: "ChunkHeader", image: Any, engine_hash: Optional[int]) -> bool:
    """Whether the payload of the chunk image `image` matches its header's checksum.

    engine_hash is the XXH3-64 an I/O thread computed (None: compute it here).
    """
    algo = hdr.metadata.get("checksum_algo", _LEGACY_ALGO)
    if algo == CHECKSUM_ALGO:
        value = _C.xxh3_64(image, hdr.payload_offset) if engine_hash is None else engine_hash
    elif algo == _LEGACY_ALGO:
        value = _C.xxh64(image, hdr.payload_offset)
    else:
        return False  # written by a newer pykvstore: not ours to trust
    return format_checksum(value) == hdr.metadata.get("checksum")


def encode_header(metadata: dict[str, str], st_dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The bytes before the payload: length prefix plus padded JSON, a multiple of 4096 long."""
    header = {
        "__metadata__": {k: str(v) for k, v in metadata.items()},
        TENSOR: {"dtype": st_dtype, "shape": list(shape), "data_offsets": [0, nbytes]},
    }
    blob = json.dumps(header, separators=(",", ":")).encode()
    total = -(-(8 + len(blob)) // PAYLOAD_ALIGN) * PAYLOAD_ALIGN
    n = total - 8
    return struct.pack("<Q", n) + blob + b" " * (n - len(blob))


def header_length(metadata: dict[str, str], st_dtype: str, shape: tuple[int, ...], nbytes: int) -> int:
    """Where the payload will start, before the checksum is known."""
    meta = dict(metadata, checksum=_CHECKSUM_PLACEHOLDER)
    return len(encode_header(meta, st_dtype, shape, nbytes))


@dataclass(frozen=True)
class ChunkHeader:
    """A header that passed `decode_header`: every field typed and in range.

    metadata holds strings only; the typed fields below are the ones readers
    and the catalog rebuild compute with, parsed once here.
    """
    metadata: dict[str, str]
    dtype: str
    shape: tuple[int, ...]
    payload_offset: int
    nbytes: int
    index: int = 0
    tokens: int = 0
    created: float = 0.0
    ttl: Optional[float] = None


# --- the one validator in front of every reader -----------------------------
# Limits a chunk this project writes never comes near; what exceeds them is not a chunk.
MAX_MODEL_NAME = 1024      # chars of the model id in a header (puts cap it lower: see MAX_MODEL_INPUT)
MAX_TAG = 4096             # chars of a tag in a header (puts cap it lower: see MAX_TAG_INPUT)
MAX_MODEL_INPUT = 256      # what put() accepts (bytes of UTF-8)
MAX_TAG_INPUT = 1024       # what put() accepts (bytes of UTF-8)
_MAX_META_ITEMS = 64
_MAX_META_VALUE = 8192     # any other metadata string (params is the longest we write)
_MAX_META_KEY = 64
_MAX_DIM = 1 << 31
_MAX_NDIM = 8
_MAX_INDEX = 1 << 40
_MAX_TTL = 100 * 365 * 86400.0
_MAX_CREATED = 1e11        # year 5138: a later time is damage
_HEX = frozenset("0123456789abcdef")
_REQUIRED = ("format", "model", "namespace", "key", "parent", "tokens", "index", "created", "params", "checksum")
_TTL_MODES = ("", "absolute", "sliding")


def _hexkey(m: dict[str, str], name: str, lengths: tuple[int, ...] = (32, 64)) -> None:
    v = m[name]
    if len(v) not in lengths or not _HEX.issuperset(v):
        raise ChunkError(f"metadata {name!r} is not a hex digest")


def _int_field(m: dict[str, str], name: str, lo: int, hi: int) -> int:
    v = m[name]
    if not (0 < len(v) <= 20 and v.isascii() and v.isdigit()):
        raise ChunkError(f"metadata {name!r} is not a decimal integer")
    n = int(v)
    if not lo <= n <= hi:
        raise ChunkError(f"metadata {name!r} = {n} is out of range [{lo}, {hi}]")
    return n


def _float_field(m: dict[str, str], name: str, lo: float, hi: float) -> float:
    v = m[name]
    if len(v) > 40:
        raise ChunkError(f"metadata {name!r} is too long for a number")
    try:
        x = float(v)
    except ValueError:
        raise ChunkError(f"metadata {name!r} is not a number") from None
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ChunkError(f"metadata {name!r} = {v!r} is not a finite number in [{lo}, {hi}]")
    return x


def _check_metadata(meta: Any) -> tuple[int, int, float, Optional[float]]:
    """Types and ranges of `__metadata__`; returns (index, tokens, created, ttl)."""
    if not isinstance(meta, dict) or len(meta) > _MAX_META_ITEMS:
        raise ChunkError("metadata is not a small string->string object")
    for k, v in meta.items():
        if not isinstance(v, str) or len(k) > _MAX_META_KEY or len(v) > _MAX_META_VALUE:
            raise ChunkError(f"metadata entry {k[:_MAX_META_KEY]!r} is not a bounded string")
    if meta.get("format") != FORMAT_VERSION:
        raise ChunkError(f"not a pykvstore chunk of format {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ChunkError(f"metadata lacks {', '.join(missing)}")
    if not 0 < len(meta["model"]) <= MAX_MODEL_NAME or len(meta.get("tag", "")) > MAX_TAG:
        raise ChunkError("metadata model or tag has an impossible length")
    _hexkey(meta, "namespace")
    _hexkey(meta, "key")
    _hexkey(meta, "parent")
    _hexkey(meta, "checksum", (16,))
    if len(meta.get("checksum_algo", "")) > 32 or meta.get("ttl_mode", "") not in _TTL_MODES:
        raise ChunkError("metadata checksum_algo or ttl_mode is not one this version knows")
    index = _int_field(meta, "index", 0, _MAX_INDEX)
    tokens = _int_field(meta, "tokens", 1, _MAX_DIM)
    created = _float_field(meta, "created", 0.0, _MAX_CREATED)
    ttl = _float_field(meta, "ttl", 1e-6, _MAX_TTL) if meta.get("ttl") else None
    _check_params(meta["params"])
    return index, tokens, created, ttl


_sound_params: dict[str, bool] = {}  # params strings already checked: one per namespace, so nearly always a hit


def _check_params(text: str) -> None:
    if text in _sound_params:
        return
    try:
        params = strict_json.loads(text, max_bytes=_MAX_META_VALUE, max_containers=16)
    except strict_json.StrictJSONError as e:
        raise ChunkError(f"metadata params: {e}") from None
    if not isinstance(params, dict):
        raise ChunkError("metadata params is not an object")
    if len(_sound_params) >= 1024:
        _sound_params.clear()
    _sound_params[text] = True


def _check_tensor(tensor: Any) -> tuple[str, tuple[int, ...], int]:
    """dtype, shape and payload size of the one tensor entry; ChunkError if any is off."""
    if not isinstance(tensor, dict) or set(tensor) != {"dtype", "shape", "data_offsets"}:
        raise ChunkError("tensor entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
        raise ChunkError(f"unknown dtype {str(dtype)[:32]!r}")
    if (not isinstance(shape, list) or not 0 < len(shape) <= _MAX_NDIM
            or not all(type(d) is int and 0 < d < _MAX_DIM for d in shape)):
        raise ChunkError("shape is not a short list of positive integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise ChunkError("data_offsets is not two integers")
    expected = _ST_ITEMSIZE[dtype]
    for d in shape:
        expected *= d
    if offsets[0] != 0 or offsets[1] != expected:
        raise ChunkError(f"data offsets {offsets[0]}..{offsets[1]} do not match shape {shape} of {dtype}")
    return dtype, tuple(shape), expected


def decode_header(buf: Any, file_size: int) -> ChunkHeader:
    """Parses and checks the header at the start of `buf`; ChunkError on anything wrong.

    The one gate between bytes read back (a file, a mapping, a Redis value) and
    every reader: it never raises anything but ChunkError, never recurses with
    the input, and what it returns is typed and in range (see ChunkHeader).
    """
    mv = memoryview(buf)
    if len(mv) < 8:
        raise ChunkError(f"file too short for a header ({len(mv)} bytes)")
    (n,) = struct.unpack("<Q", mv[:8])
    if n > MAX_HEADER or 8 + n > len(mv):
        raise ChunkError(f"header length {n} is impossible for a file of {file_size} bytes")
    if (8 + n) % PAYLOAD_ALIGN:
        raise ChunkError(f"payload offset {8 + n} is not a multiple of {PAYLOAD_ALIGN}")
    try:
        blob = bytes(mv[8 : 8 + n])
        header = strict_json.loads(blob[: blob.rfind(b"}") + 1], max_bytes=MAX_HEADER, max_containers=8)
    except strict_json.StrictJSONError as e:
        raise ChunkError(f"header is not plain JSON: {e}") from None
    if not isinstance(header, dict) or set(header) != {"__metadata__", TENSOR}:
        raise ChunkError("header does not describe exactly one 'kv' tensor with metadata")
    index, tokens, created, ttl = _check_metadata(header["__metadata__"])
    dtype, shape, nbytes = _check_tensor(header[TENSOR])
    if 8 + n + nbytes != file_size:
        raise ChunkError(f"file is {file_size} bytes, header says {8 + n + nbytes}: truncated or padded")
    return ChunkHeader(metadata=header["__metadata__"], dtype=dtype, shape=shape, payload_offset=8 + n,
                       nbytes=nbytes, index=index, tokens=tokens, created=created, ttl=ttl)
