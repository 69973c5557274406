"""lookup is asked for every waiting request, every step: its cost must not
grow with what else the bucket holds. Measured in SQLite virtual-machine steps
(the progress handler), not seconds: a query that walks every ready chunk shows
as steps in proportion to the bucket."""

import time

import numpy as np
import torch

import pykvstore as kv


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
