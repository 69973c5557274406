import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pykvstore as kv
import xxhash

from pykvstore.keys import as_tokens, chunk_keys, chunk_keys_hex, chunk_keys_py, namespace_digest, salt_digest

ROOT = namespace_digest({"model": "m"})


def test_same_tokens_same_keys_in_any_form():
    t = list(range(1000, 1600))
    a = chunk_keys(ROOT, as_tokens(t), 256)
    assert len(a) == 2  # the partial third chunk gets no key
    for other in (np.array(t, dtype=np.int64), np.array(t, dtype=np.int32), torch.tensor(t), tuple(t), range(1000, 1600)):
        assert chunk_keys(ROOT, as_tokens(other), 256) == a


def test_keys_are_chained():
    t = np.arange(1024)
    u = t.copy()
    u[600] = 7  # differs in chunk 2
    a, b = chunk_keys(ROOT, t, 256), chunk_keys(ROOT, u, 256)
    assert a[:2] == b[:2] and a[2] != b[2] and a[3] != b[3]  # everything after the change differs
    v = t.copy()
    v[:256] = t[256:512]  # same chunk content at a different position
    assert chunk_keys(ROOT, v, 256)[1] != a[1]


def test_algorithms():
    t = as_tokens(np.arange(512))
    x = chunk_keys(ROOT, t, 256, "xxh3_128")
    s = chunk_keys(namespace_digest({"model": "m"}, "sha256"), t, 256, "sha256")
    assert [len(k) for k in x] == [16, 16] and [len(k) for k in s] == [32, 32]
    with pytest.raises(kv.InputError, match="unknown hash"):
        chunk_keys(ROOT, t, 256, "md5")


def test_namespace_covers_every_parameter():
    base = {"model": "m", "revision": None, "geometry": {"layers": 2}, "dtype": "bf16", "chunk_tokens": 256,
            "tp_rank": 0, "tp_size": 1, "hash": "xxh3_128", "format": "1", "salt": None}
    d = namespace_digest(base)
    for key, value in [("model", "n"), ("revision", "abc"), ("geometry", {"layers": 3}), ("dtype", "fp16"),
                       ("chunk_tokens", 512), ("tp_rank", 1), ("tp_size", 2), ("format", "2"), ("salt", salt_digest("t"))]:
        assert namespace_digest(dict(base, **{key: value})) != d, key
    assert namespace_digest(dict(reversed(list(base.items())))) == d  # order of parameters is irrelevant


def test_keys_do_not_depend_on_the_process():
    code = ("import numpy as np; from pykvstore.keys import *; "
            "print(chunk_keys(namespace_digest({'model': 'm'}), as_tokens(np.arange(777)), 256)[-1].hex())")
    outs = set()
    for seed in ("0", "1", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert outs == {chunk_keys(ROOT, as_tokens(np.arange(777)), 256)[-1].hex() + "\n"}


@pytest.mark.parametrize("bad, match", [
    ([[1, 2], [3, 4]], "1-D"),
    ([1.5, 2.0], "integers"),
    (np.array([0.0, 1.0]), "integers"),
    ([1, -1], r"\[0, 2\*\*32\)"),
    ([1, 2**32], r"\[0, 2\*\*32\)"),
    ([1, 2**70], r"\[0, 2\*\*32\)"),
    ("hello", "1-D sequence of integers"),
    ([1, "a"], "integers"),
    (5, "1-D"),
    ([True, False], "integers"),
])
def test_bad_tokens_are_named(bad, match):
    with pytest.raises(kv.TokensError, match=match):
        as_tokens(bad)


def test_empty_tokens_have_no_keys():
    assert chunk_keys(ROOT, as_tokens([]), 256) == []


def test_lists_and_tuples_convert_natively_to_the_same_tokens():
    """The native path for plain ints gives what the generic path gives, at every width boundary."""
    rng = np.random.default_rng(7)
    values = [0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1] + rng.integers(0, 2**32, 5000).tolist()
    want = np.asarray(values, dtype=np.int64).astype("<u4")
    for form in (values, tuple(values)):
        got = as_tokens(form)
        assert got.dtype == np.dtype("<u4") and got.flags.writeable and np.array_equal(got, want)
    assert kv._C.tokens_u32(values) == want.tobytes()
    assert as_tokens([]).size == 0 and as_tokens(()).size == 0


@pytest.mark.parametrize("bad", [[1, -1], [2**32], [1, 2**70], [1, 2.0], [True, 1], [1, np.int64(2)], [[1, 2]], [1, "2"]])
def test_lists_the_native_path_declines_take_the_generic_one(bad):
    """Anything but plain ints in [0, 2**32) is left to the generic path: the same answer or error as before
    (but a bool, which numpy reads as an int beside ints, is refused: test_leftovers.py)."""
    assert kv._C.tokens_u32(bad) is None
    try:
        want = np.asarray(bad)
    except ValueError:
        want = None
    if want is not None and want.dtype.kind in "iu" and want.ndim == 1 and want.min() >= 0 and want.max() < 2**32 \
            and not any(isinstance(t, bool) for t in bad):
        assert np.array_equal(as_tokens(bad), want)  # e.g. numpy ints in a list still work
    else:
        with pytest.raises(kv.TokensError):
            as_tokens(bad)


def test_list_and_tuple_subclasses_convert_as_numpy_reads_them():
    """A list or tuple subclass may answer len() and indexing its own way (a lazy or
    windowed view): numpy reads it through those, so the tokens are what it presents,
    not the storage underneath that the native converter would read."""

    class Window(list):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return list.__getitem__(self, slice(1, 3))[i]

        def __iter__(self):
            return iter(list.__getitem__(self, slice(1, 3)))

    class TupleWindow(tuple):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return tuple.__getitem__(self, slice(1, 3))[i]

        def __iter__(self):
            return iter(tuple.__getitem__(self, slice(1, 3)))

    for seq in (Window([5, 6, 7, 8]), TupleWindow((5, 6, 7, 8))):
        want = np.asarray(seq).astype("<u4")
        assert want.tolist() == [6, 7]  # what numpy (the generic path) sees
        assert as_tokens(seq).tolist() == want.tolist()


# --- the native XXH3-128 chain (_C.chain_keys) is the Python reference, byte for byte --------
# Every bucket's keys were derived by chunk_keys_py (python-xxhash); lookup now derives them
# natively. Any difference would turn every stored chunk into a miss.

def test_native_xxh3_128_is_the_published_digest():
    """Every length class of XXH3-128 (0, 1-3, 4-8, 9-16, 17-128, 129-240, longer; block
    and stripe edges) against the xxhash package, on random bytes."""
    rng = np.random.default_rng(3)
    for n in [*range(0, 1100), 1023 + 1024, 2048, 4095, 4096, 4097, 16385, 65549, (1 << 20) + 3]:
        data = rng.bytes(n)
        assert kv._C.xxh3_128(data) == xxhash.xxh3_128(data).digest(), n


@pytest.mark.parametrize("chunk_tokens", [1, 2, 3, 4, 5, 7, 28, 29, 30, 31, 32, 33, 56, 57, 60, 64, 100, 256, 1000])
def test_native_chain_matches_the_python_reference(chunk_tokens):
    """Chains of 0 to 6 chunks (a partial last one too) under roots of other lengths than a
    namespace digest's 16 bytes, so the first link's input falls in every length class."""
    rng = np.random.default_rng(chunk_tokens)
    for root in (ROOT, b"", b"r", rng.bytes(7), rng.bytes(32), rng.bytes(300)):
        for n in sorted({0, chunk_tokens - 1, chunk_tokens, chunk_tokens + 1, 3 * chunk_tokens, 6 * chunk_tokens - 1}):
            toks = as_tokens(rng.integers(0, 2**32, n, dtype=np.uint64))
            want = chunk_keys_py(root, toks, chunk_tokens)
            assert len(want) == n // chunk_tokens
            assert chunk_keys(root, toks, chunk_tokens) == want
            assert chunk_keys_hex(root, toks, chunk_tokens) == [k.hex() for k in want]


def test_key_format_is_pinned():
    """Keys that buckets hold today (values from the pure-Python derivation before the
    native one existed): the format must never drift, in either algorithm."""
    t = as_tokens(np.arange(777))
    assert chunk_keys_hex(ROOT, t, 256)[-1] == "628db63257c3df1678aeeda9fe3b6ee9"
    assert chunk_keys_hex(ROOT, as_tokens(np.arange(40) * 99991), 3)[-1] == "dbbba43f7daa94d51abd5812c67bd095"
    sha_root = namespace_digest({"model": "m"}, "sha256")
    assert chunk_keys_hex(sha_root, t, 256, "sha256")[-1] == (
        "de168d10af7bfac4267e6aea6a627b8efe06d71627833113eab43cc6c07dc017")


def test_store_keys_are_the_reference_keys(tmp_path):
    """What lookup, put and get ask the catalog for: the store's namespace, hashed by the reference."""
    toks = np.random.default_rng(5).integers(0, 128000, 256 * 5 + 17)
    for algo in ("xxh3_128", "sha256"):
        with kv.KVStore(tmp_path / algo, model="m", hash=algo, geometry=kv.Geometry(3, 4, 16, "bfloat16")) as s:
            ns = s._names.of(s._names.geometry)
            want = [k.hex() for k in chunk_keys_py(ns.digest, as_tokens(toks), 256, algo)]
            assert s.hashes(toks) == s.hashes(toks.tolist()) == want
            assert len(want) == 5 and {len(k) for k in want} == {32 if algo == "xxh3_128" else 64}


def test_sha256_chains_take_the_python_path():
    t = as_tokens(np.arange(1000))
    root = namespace_digest({"model": "m"}, "sha256")
    want = chunk_keys_py(root, t, 100, "sha256")
    assert chunk_keys(root, t, 100, "sha256") == want and len(want) == 10
    assert chunk_keys_hex(root, t, 100, "sha256") == [k.hex() for k in want]


def test_any_tokens_array_gives_the_keys_of_its_uint32_values():
    """int64, big-endian and strided (non-contiguous) arrays are converted, never read raw."""
    t = np.arange(0, 3000, 3, dtype=np.int64)
    want = chunk_keys_py(ROOT, as_tokens(t), 100)
    strided = np.column_stack([t, t]).astype("<u4")[:, 0]
    assert not strided.flags.c_contiguous
    for form in (t, t.astype(">u4"), strided, t.astype("<u4")):
        assert chunk_keys(ROOT, form, 100) == want, form.dtype


@pytest.mark.parametrize("bad, match", [(0, "positive, got 0"), (-256, "positive, got -256"),
                                        (True, "an integer, got bool"), (2.5, "an integer, got float"),
                                        ("256", "an integer, got str")])
def test_bad_chunk_sizes_are_named(bad, match):
    t = as_tokens(np.arange(512))
    for fn in (chunk_keys, chunk_keys_hex, chunk_keys_py):
        with pytest.raises(kv.InputError, match=match):
            fn(ROOT, t, bad)


def test_unknown_algorithm_is_named_on_every_path():
    t = as_tokens(np.arange(512))
    for fn in (chunk_keys, chunk_keys_hex, chunk_keys_py):
        with pytest.raises(kv.InputError, match="unknown hash algorithm 'md5'"):
            fn(ROOT, t, 256, "md5")


def test_native_chain_refuses_what_keys_py_never_passes():
    """The raw call: a chunk size of 0 and a non-contiguous buffer are errors, not a guess."""
    with pytest.raises(ValueError, match="chunk_bytes must be positive"):
        kv._C.chain_keys(ROOT, np.arange(8, dtype=np.uint32), 0, True)
    with pytest.raises((ValueError, BufferError)):
        kv._C.chain_keys(ROOT, np.arange(16, dtype=np.uint32)[::2], 4, True)
    assert kv._C.chain_keys(ROOT, b"", 4, True) == []
