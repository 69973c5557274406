"""Crafted chunk headers with valid payload checksums: one strict validator, a miss each time.

A property-style fuzz: thousands of mutated headers (wrong types, deep nesting,
huge and non-finite numbers, repeated keys, flipped bytes), each one with the
payload and its checksum intact, go through decode_header, the three load paths
(mapped with scatter on the I/O thread, mapped without, read buffers), fsck and
a catalog rebuild. Properties: nothing raises but ChunkError at the validator,
nothing hangs (a watchdog kills a stuck run), and a load that reports tokens
loaded put exactly the stored bytes there. Fixed seed, so a failure replays.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import struct
import time

import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference
from pykvstore.chunk_file import PAYLOAD_ALIGN, ChunkHeader, decode_header
from pykvstore.errors import ChunkError
from workers import sequence

SEED = 1414
CT = 32
EVIL = "@@EVIL@@"

# Raw JSON tokens put where a value was: wrong types, non-finite and huge numbers, nesting.
RAW_VALUES = [
    '["BF16"]', '{"a":"b"}', "1", "-1", "0", "2.0", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "null",
    "true", "false", '""', '"x"', '"-1"', '"1e400"', '"nan"', '"inf"', '"NaN"', '"' + "9" * 30 + '"',
    '"' + "9" * 5000 + '"', "9" * 5000, '"\\u0000"', '"\\ud800"', '"' + "x" * 20000 + '"', "[]", "{}",
    "[[[[[[[[[[1]]]]]]]]]]", "[1.5, 2]", "[0, 1e400]", "[0, -1]", "[0]", "[0, 1, 2]", '[0, "12288"]',
    "[" * 100_000 + "]" * 100_000, '{"x":' * 50_000 + "1" + "}" * 50_000, '"ab\\"cd"', '"\\\\"',
]


def _encode(text: bytes, payload: bytes, n: int | None = None) -> bytes:
    """A chunk file around header text `text`: padded to a 4096 boundary unless `n` forces a length."""
    if n is None:
        n = -(-(8 + len(text)) // PAYLOAD_ALIGN) * PAYLOAD_ALIGN - 8
    body = text + b" " * max(0, n - len(text))
    return struct.pack("<Q", n) + body + payload


def _with_raw(header: dict, path: tuple, raw: str) -> bytes:
    """The header as JSON with the value at `path` replaced by the raw token text `raw`."""
    h = json.loads(json.dumps(header))
    node = h
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = EVIL
    return json.dumps(h, separators=(",", ":")).replace(f'"{EVIL}"', raw, 1).encode()


def mutants(original: bytes, rng: random.Random, count: int):
    """`count` mutated chunk images of `original` (same payload, same checksum field)."""
    n = struct.unpack("<Q", original[:8])[0]
    header = json.loads(original[8 : 8 + n])
    payload = original[8 + n :]
    meta_keys = list(header["__metadata__"])
    slots = [("__metadata__", k) for k in meta_keys] + [("kv", "dtype"), ("kv", "shape"), ("kv", "data_offsets"),
                                                        ("kv", "shape", 0), ("kv", "shape", 2),
                                                        ("kv", "data_offsets", 1), ("__metadata__",), ("kv",)]
    text = json.dumps(header, separators=(",", ":")).encode()
    for i in range(count):
        kind = i % 8
        if kind in (0, 1, 2):  # one value replaced by a hostile one
            raw = RAW_VALUES[rng.randrange(len(RAW_VALUES))]
            if "[" * 1000 in raw and rng.random() < 0.8:
                raw = "[" * 300 + "]" * 300  # keep the huge ones a minority: they dominate the time
            yield _encode(_with_raw(header, rng.choice(slots), raw), payload)
        elif kind == 3:  # a key dropped, added, or repeated with another value
            h = json.loads(json.dumps(header))
            where = h["__metadata__"] if rng.random() < 0.7 else h["kv"]
            choice = rng.random()
            if choice < 0.4:
                where.pop(rng.choice(list(where)))
                yield _encode(json.dumps(h).encode(), payload)
            elif choice < 0.7:
                where[rng.choice(["extra", "__metadata__", "kv", "", "x" * 100])] = rng.choice(["v", 1, [1], None])
                yield _encode(json.dumps(h).encode(), payload)
            else:  # duplicate key: a second reader might keep either value
                k = rng.choice(meta_keys)
                t = json.dumps(h, separators=(",", ":"))
                t = t.replace('"__metadata__":{', '"__metadata__":{"%s":"0",' % k, 1)
                yield _encode(t.encode(), payload)
        elif kind == 4:  # shape/dtype that keep the byte count but not the chunk
            h = json.loads(json.dumps(header))
            shape = h["kv"]["shape"]
            choice = rng.random()
            if choice < 0.3:
                rng.shuffle(shape)
            elif choice < 0.5:
                h["kv"]["shape"] = [shape[0] * shape[1]] + shape[2:]
            elif choice < 0.7:
                h["kv"]["dtype"] = rng.choice(["F16", "U8", "F32", "I8", "bf16", "BF16 "])
            else:
                h["kv"]["shape"] = shape + [1]
            yield _encode(json.dumps(h).encode(), payload)
        elif kind == 5:  # flipped, inserted or deleted bytes in the JSON text
            t = bytearray(text)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(t))
                op = rng.random()
                if op < 0.5:
                    t[pos] = rng.randrange(256)
                elif op < 0.75:
                    t.insert(pos, rng.choice(b'[]{}",:0123456789e.-\\'))
                else:
                    del t[pos]
            yield _encode(bytes(t), payload)
        elif kind == 6:  # the length prefix lies
            fake = rng.choice([0, 1, 7, n - 1, n + 1, n - 4096, n + 4096, 1 << 20, (1 << 20) + 4088, 1 << 63,
                               len(text), len(text) + 1])
            img = _encode(text, payload, n)
            yield struct.pack("<Q", fake % (1 << 64)) + img[8:]
        else:  # metadata numbers written as other valid-looking strings
            h = json.loads(json.dumps(header))
            k = rng.choice(["index", "tokens", "created", "ttl", "ttl_mode", "checksum_algo", "tag", "model",
                            "key", "parent", "namespace", "params"])
            h["__metadata__"][k] = rng.choice(["1e400", "nan", "-inf", "inf", "-0", "0x10", " 1", "1_000", "٣",
                                               "9" * 25, "1e308", "-5", "", "[1]", '{"geometry":' * 40 + "1" +
                                               "}" * 40, "\x00", "A" * 32, "sliding", "12345678901234567890"])
            yield _encode(json.dumps(h).encode(), payload)


@pytest.fixture
def watchdog():
    """A hang is a failure, not a stuck CI job: dump every thread and exit after 10 minutes."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def one_chunk(bucket, no_fsync):
    with kv.KVStore(bucket, model="m", chunk_tokens=CT) as s:
        toks, cache, ids = sequence(1)
        toks = toks[:CT]
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == CT
        row = s._catalog.ready_prefix(s.hashes(toks), time.time())[0]
        original = (bucket / row.path).read_bytes()
    return toks, cache, ids, row, original


def test_the_validator_returns_a_checked_header_or_raises_chunk_error_only(one_chunk):
    *_, original = one_chunk
    good = decode_header(original, len(original))
    accepted = 0
    for img in mutants(original, random.Random(SEED), 6000):
        try:
            hdr = decode_header(img, len(img))
        except ChunkError:
            continue
        accepted += 1
        assert isinstance(hdr, ChunkHeader)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in hdr.metadata.items())
        assert type(hdr.index) is int and type(hdr.tokens) is int and hdr.created == hdr.created  # not NaN
        assert hdr.nbytes == good.nbytes and hdr.payload_offset + hdr.nbytes == len(img)
    assert 0 < accepted < 6000  # harmless mutants (a tag, an extra key) do pass


@pytest.mark.parametrize("path", ["mapped", "mapped_no_scatter", "read"])
def test_crafted_headers_on_every_load_path_are_misses_with_the_right_bytes(bucket, one_chunk, path, watchdog,
                                                                            caplog):
    toks, src, src_ids, row, original = one_chunk
    before = kv.defaults.get("mmap_read")
    kv.defaults.set(mmap_read="off" if path == "read" else "auto")
    rng = random.Random(SEED + len(path))
    dst_ids = block_table(4, 24, 3)
    want = reference(src, "BHTC", src_ids, 8, 0, CT)
    target = bucket / row.path
    loads = misses = 0
    try:
        with kv.KVStore(bucket, model="m", chunk_tokens=CT, host_capacity=0) as s:
            for i, img in enumerate(mutants(original, rng, 700)):
                if s.lookup(toks) == 0:  # the last mutant was dropped: store the chunk again
                    assert s.put(toks, kv.PagedKV(src, "BHTC"), src_ids) == CT
                tmp = target.with_name("mutant.tmp")
                tmp.write_bytes(img)
                os.replace(tmp, target)
                dst = make_cache("BHTC", seed=100 + i % 7, zero=True)
                cache = kv.PagedKV(dst, "BHTC")
                if path == "mapped_no_scatter":
                    cache._native = None  # as for layers of differing strides: the copy runs on this thread
                if i % 2:
                    loaded = s.get(toks, cache, dst_ids)
                else:
                    loaded = s.get_async(toks, cache, dst_ids).wait()
                assert loaded in (0, CT)
                if loaded:
                    loads += 1
                    assert torch.equal(reference(dst, "BHTC", dst_ids, 8, 0, CT), want)
                else:
                    misses += 1
                    assert not target.exists()  # set aside once, so later gets do not meet it again
                    assert s.get(toks, cache, dst_ids) == 0
            assert s.stats().corrupt_chunks == misses
    finally:
        kv.defaults.set(mmap_read=before)
    assert loads and misses


def test_crafted_headers_never_break_fsck_or_a_catalog_rebuild(bucket, one_chunk, watchdog):
    *_, row, original = one_chunk
    base = bucket / row.path
    images = list(mutants(original, random.Random(SEED + 7), 2000))
    good = 0
    for i, img in enumerate(images):  # each at its own path, named by its own key (the name must match)
        try:
            hdr = decode_header(img, len(img))
            key = hdr.metadata["key"]
            if key != row.key:
                raise ChunkError("key mutated: it lands under another name")
        except ChunkError:
            key = f"{i:032x}"
        else:
            good += 1
            continue  # a sound chunk under another key's name would be quarantined as misnamed; keep it simple
        p = base.parent.parent.parent / key[:2] / key[2:4] / f"{key}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(img)
    with kv.Bucket(bucket) as b:  # open: no exception, and nothing crafted was indexed
        report = b.fsck()
        assert report["ok"] == 1 and len(report["unindexed"]) == 0
        assert len(report["damaged"]) == len(images) - good
    (bucket / "catalog.sqlite").unlink()
    with kv.Bucket(bucket) as b:  # rebuild: the one sound chunk indexed, every crafted file set aside once
        assert b.stats().chunks == 1
        assert b.fsck()["problems"] == 0
    assert len(list((bucket / "quarantine").iterdir())) == len(images) - good
