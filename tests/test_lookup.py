"""lookup is asked for every waiting request, every step: its cost must not
grow with what else the bucket holds. Measured in SQLite virtual-machine steps
(the progress handler), not seconds: a query that walks every ready chunk shows
as steps in proportion to the bucket."""

import time

import numpy as np
import torch

import pykvstore as kv
from pykvstore.catalog import READY, WRITING, Catalog, ChunkRow


def _steps(store, fn) -> int:
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    conn = store._catalog._conn
    conn.set_progress_handler(count, 1)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 1)
    return steps[0]


def test_lookup_cost_does_not_grow_with_the_bucket(tmp_path, no_fsync):
    """lookup, and the get and put paths' queries by key, cost the same with 1,200
    other chunks in the bucket as with none (the state index made them walk every one)."""
    cache = kv.PagedKV([torch.zeros(40, 1, 8, 4, dtype=torch.bfloat16)], dims="BHTC")
    rng = np.random.default_rng(0)
    mine = rng.integers(0, 50000, 8 * 16)
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=16, capacity="1GiB") as s:
        assert s.put(mine, cache, np.arange(16)) == len(mine)
        keys = s.hashes(mine)
        paths = {"lookup": lambda: s.lookup(mine),
                 "ready_prefix": lambda: s._catalog.ready_prefix(keys, time.time()),
                 "existing": lambda: s._catalog.existing(keys, time.time())}
        small = {name: _steps(s, fn) for name, fn in paths.items()}
        for _ in range(60):  # 1,200 other chunks
            other = rng.integers(0, 50000, 20 * 16)
            assert s.put(other, cache, np.arange(40)) == len(other)
        assert s.lookup(mine) == len(mine)
        large = {name: _steps(s, fn) for name, fn in paths.items()}
    assert all(0 < small[n] and large[n] < 2 * small[n] for n in paths), (small, large)


# --- ready_prefix_len: one statement over the keys as a JSON array ----------------------------
# The prefix is not monotone in the catalog (eviction, expiry and in-flight writes remove or hide
# any chunk of a chain), so the answer is the first key without a ready, alive row: checked here
# against that definition and against the IN-list query it replaced, on random catalogs.

def _model(keys, state, now):
    """The definition: the first key whose row is missing, writing or expired."""
    for i, k in enumerate(keys):
        row = state.get(k)
        if row is None or row[0] != READY or (row[1] is not None and row[1] <= now):
            return i
    return len(keys)


def _random_catalog(cat, rng, n):
    keys = [rng.bytes(16).hex() for _ in range(n)]
    state, rows = {}, []
    for i, k in enumerate(keys):
        kind = rng.choice(["ready", "ready", "ready", "missing", "writing", "expired", "alive_ttl"], p=[.6, .1, .1, .05, .05, .05, .05])
        if kind == "missing":
            continue
        st = WRITING if kind == "writing" else READY
        expires = 50.0 if kind == "expired" else (500.0 if kind == "alive_ttl" else None)
        state[k] = (st, expires)
        rows.append(ChunkRow(key=k, parent=keys[i - 1] if i else "ns", namespace="ns", model="m", chunk_index=i,
                             tokens=16, nbytes=1, path=f"data/{k}", created=0.0, last_access=0.0, state=st,
                             expires=expires))
    cat.insert_many(rows)
    return keys, state


def test_prefix_length_is_the_first_key_not_ready_and_alive(tmp_path):
    rng = np.random.default_rng(11)
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    try:
        assert cat._json  # this SQLite has json_each: the statement under test runs
        for trial in range(40):
            keys, state = _random_catalog(cat, rng, int(rng.integers(1, 300)))
            for now in (10.0, 100.0, 1000.0):
                for probe in (keys, keys[: len(keys) // 2], keys[1:], keys[::-1], keys + keys[:3], []):
                    want = _model(probe, state, now)
                    assert cat.ready_prefix_len(probe, now) == want, (trial, now)
                    assert cat.ready_prefix_len_in(probe, now) == want, (trial, now)
    finally:
        cat.close()


def test_keys_that_json_cannot_carry_as_they_are(tmp_path):
    """Keys are hex in every caller; anything else (quotes, backslashes, other scripts,
    control characters) is encoded, never misread and never an error."""
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    try:
        odd = ['a"b', "c\\d", "é", "\x01e", "tab\there", "plain", 'q"\\\u2603']
        cat.insert_many(ChunkRow(key=k, parent="ns", namespace="ns", model="m", chunk_index=i, tokens=16, nbytes=1,
                                 path=f"data/{i}", created=0.0, last_access=0.0, state=READY)
                        for i, k in enumerate(odd))
        for i in range(len(odd)):
            keys = odd[: i + 1] + ["absent"] + odd
            assert cat.ready_prefix_len(keys, 1.0) == i + 1
            assert cat.ready_prefix_len(odd[i:], 1.0) == len(odd) - i
        assert cat.ready_prefix_len(["plain", "\x01absent", "plain"], 1.0) == 1
        # pasted into the array as they are, these would read as other keys that are held
        cat.insert_many(ChunkRow(key=k, parent="ns", namespace="ns", model="m", chunk_index=0, tokens=16, nbytes=1,
                                 path=f"data/{k}", created=0.0, last_access=0.0, state=READY) for k in ("x", "y", "aA"))
        assert cat.ready_prefix_len(["x", "y"], 1.0) == 2
        assert cat.ready_prefix_len(['x","y'], 1.0) == 0
        assert cat.ready_prefix_len(["a\\u0041", "aA"], 1.0) == 0
    finally:
        cat.close()


def test_without_sqlite_json_the_in_lists_answer(tmp_path, no_fsync):
    """A SQLite built without JSON functions: lookup takes the IN-list statements, same answers."""
    cache = kv.PagedKV([torch.zeros(40, 1, 8, 4, dtype=torch.bfloat16)], dims="BHTC")
    toks = np.random.default_rng(2).integers(0, 50000, 16 * 12)
    with kv.KVStore(tmp_path / "b", model="m", chunk_tokens=16, capacity="1GiB") as s:
        assert s.put(toks[: 16 * 7], cache, np.arange(14)) == 16 * 7
        with_json = [s.lookup(toks[:n]) for n in range(0, len(toks) + 1, 5)]
        s._catalog._json = False
        assert [s.lookup(toks[:n]) for n in range(0, len(toks) + 1, 5)] == with_json
        assert max(with_json) == 16 * 7 and with_json[1] == 0
