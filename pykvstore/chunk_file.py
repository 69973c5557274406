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
import struct
from dataclasses import dataclass
from typing import Any, Optional

from . import _C
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
    metadata: dict[str, str]
    dtype: str
    shape: tuple[int, ...]
    payload_offset: int
    nbytes: int


def decode_header(buf: Any, file_size: int) -> ChunkHeader:
    """Parses and checks the header at the start of `buf`; ChunkError on anything wrong."""
    mv = memoryview(buf)
    if len(mv) < 8:
        raise ChunkError(f"file too short for a header ({len(mv)} bytes)")
    (n,) = struct.unpack("<Q", mv[:8])
    if n > MAX_HEADER or 8 + n > len(mv):
        raise ChunkError(f"header length {n} is impossible for a file of {file_size} bytes")
    try:
        header = json.loads(bytes(mv[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError) as e:
        raise ChunkError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or set(header) != {"__metadata__", TENSOR}:
        raise ChunkError("header does not describe exactly one 'kv' tensor with metadata")
    meta, tensor = header["__metadata__"], header[TENSOR]
    try:
        dtype, shape, (lo, hi) = tensor["dtype"], tuple(int(d) for d in tensor["shape"]), tensor["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
        raise ChunkError(f"tensor entry is malformed: {e!r}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ChunkError(f"not a pykvstore chunk of format {FORMAT_VERSION}")
    if dtype not in _ST_ITEMSIZE:
        raise ChunkError(f"unknown dtype {dtype!r}")
    expected = _ST_ITEMSIZE[dtype]
    for d in shape:
        expected *= d
    if lo != 0 or hi != expected:
        raise ChunkError(f"data offsets {lo}..{hi} do not match shape {shape} of {dtype}")
    if (8 + n) % PAYLOAD_ALIGN or 8 + n + hi != file_size:
        raise ChunkError(f"file is {file_size} bytes, header says {8 + n + hi}: truncated or padded")
    return ChunkHeader(metadata=meta, dtype=dtype, shape=shape, payload_offset=8 + n, nbytes=hi)
