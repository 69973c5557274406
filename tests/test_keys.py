import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore.keys import as_tokens, chunk_keys, namespace_digest, salt_digest

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
    """Anything but plain ints in [0, 2**32) is left to the generic path: the same answer or error as before."""
    assert kv._C.tokens_u32(bad) is None
    try:
        want = np.asarray(bad)
    except ValueError:
        want = None
    if want is not None and want.dtype.kind in "iu" and want.ndim == 1 and want.min() >= 0 and want.max() < 2**32:
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
