import struct

import pytest
from safetensors import safe_open

from pykvstore.chunk_file import PAYLOAD_ALIGN, checksum, decode_header, encode_header
from pykvstore.errors import ChunkError
from pykvstore.keys import FORMAT_VERSION

META = {"format": FORMAT_VERSION, "model": "m", "namespace": "cd" * 16, "key": "ab" * 16, "parent": "cd" * 16,
        "tokens": "16", "index": "0", "created": "1700000000.0", "params": "{}", "checksum": "0" * 16}


def test_payload_starts_at_an_aligned_offset_and_safetensors_reads_it(tmp_path):
    import torch

    payload = torch.arange(2 * 3 * 4, dtype=torch.float32)
    head = encode_header(META, "F32", (2, 3, 4), payload.numel() * 4)
    assert len(head) % PAYLOAD_ALIGN == 0
    f = tmp_path / "c.safetensors"
    f.write_bytes(head + payload.numpy().tobytes())
    with safe_open(str(f), "pt") as h:
        assert h.metadata()["key"] == META["key"]
        assert torch.equal(h.get_tensor("kv"), payload.view(2, 3, 4))
    hdr = decode_header(f.read_bytes(), f.stat().st_size)
    assert hdr.payload_offset == len(head) and hdr.nbytes == 96 and hdr.shape == (2, 3, 4)


def test_long_metadata_moves_the_payload_to_the_next_page():
    head = encode_header(dict(META, tag="x" * 5000), "U8", (10,), 10)
    assert len(head) == 2 * PAYLOAD_ALIGN


@pytest.mark.parametrize("damage", ["short", "huge_len", "not_json", "size", "format", "offsets"])
def test_damaged_headers_raise_chunk_error(damage):
    head = bytearray(encode_header(META, "U8", (16,), 16))
    data = bytes(head) + bytes(16)
    if damage == "short":
        data = data[:5]
    elif damage == "huge_len":
        data = struct.pack("<Q", 1 << 40) + data[8:]
    elif damage == "not_json":
        data = data[:8] + b"\xff" * 20 + data[28:]
    elif damage == "size":
        data = data[:-1]
    elif damage == "format":
        data = bytes(encode_header(dict(META, format="0"), "U8", (16,), 16)) + bytes(16)
    elif damage == "offsets":
        data = bytes(encode_header(META, "U8", (17,), 16)) + bytes(16)
    with pytest.raises(ChunkError):
        decode_header(data, len(data))


def test_checksum_is_fixed_width_and_sensitive():
    a = checksum(b"\x00" * 100)
    assert len(a) == 16 and a != checksum(b"\x00" * 99 + b"\x01")
