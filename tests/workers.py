"""Processes the multi-process tests start: `python workers.py ROLE BUCKET ...`.

Each sequence `seed` is 96 tokens (3 chunks of 32) whose KV comes from
make_cache(seed=seed), so any process can regenerate and check it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pykvstore as kv  # noqa: E402
from helpers import block_table, make_cache, reference, tokens  # noqa: E402

CT, N_TOKENS = 32, 96


def sequence(seed: int):
    cache = make_cache("BHTC", seed=seed)
    return tokens(N_TOKENS, seed), cache, block_table(12, 24, seed)


def open_store(bucket: str, capacity=None, **kwargs) -> kv.KVStore:
    return kv.KVStore(bucket, model="mp/model", chunk_tokens=CT, capacity=capacity, **kwargs)


def write(bucket: str, first: int, count: int, capacity=None, remote=None, ttl=None) -> None:
    """Puts sequences first..first+count-1, printing each seed once it returned."""
    kwargs = {"remote": remote.split(" ") if remote and " " in remote else remote} if remote else {}
    with open_store(bucket, capacity, **kwargs) as s:
        for seed in range(first, first + count):
            stored = s.put(*args(seed), **({"ttl": ttl} if ttl else {}))
            print(seed, stored, flush=True)


def write_forever(bucket: str) -> None:
    with open_store(bucket) as s:
        seed = 0
        while True:
            s.put(*args(seed))
            print(seed, flush=True)
            seed += 1


STOP_POINTS = ("reserved", "tmp_partial", "tmp_written", "renamed")


def write_then_stop(bucket: str, point: str) -> None:
    """Puts sequences 0-2, then stops inside the put of sequence 3 at `point` and
    waits to be killed, having printed what it left: a test's pause hook over
    this process's own store (the store is unchanged; its disk tier and catalog
    methods are wrapped on this one object).

    reserved: the first chunk's row is reserved (writing), nothing written yet.
    tmp_partial: half the chunk image is in its temp file.
    tmp_written: the whole image is in its temp file, synced, not renamed.
    renamed: the file is in place under data/, its row not yet committed.
    """
    import json
    import os
    import time

    from pykvstore.tiers import disk as disk_mod

    def stop(**state) -> None:
        print("stopped", json.dumps(state), flush=True)
        while True:
            time.sleep(60)

    with open_store(bucket) as s:
        for seed in range(3):
            s.put(*args(seed))
            print(seed, flush=True)
        real_write, real_mark_ready = s._disk.write, s._catalog.mark_ready

        def write(rel, buf, size):
            if point == "reserved":
                stop(rel=rel, tmp=None, size=size)
            if point.startswith("tmp_"):
                tmp = s._disk.tmp / f"{disk_mod.HOST}.{os.getpid()}.stopped.{os.path.basename(rel)}"
                part = size if point == "tmp_written" else size // 2
                s._disk.engine.write(str(tmp), str(tmp) + ".part", buf, part, 0, True).result()
                stop(rel=rel, tmp=str(tmp.relative_to(s.root)), size=part)
            return real_write(rel, buf, size)

        def mark_ready(key, now, owner=None):
            if point == "renamed":
                stop(key=key)
            return real_mark_ready(key, now, owner)

        s._disk.write, s._catalog.mark_ready = write, mark_ready
        s.put(*args(3))
        raise SystemExit(f"the put finished without reaching {point}")


def args(seed: int):
    """The put/get arguments of sequence(seed): tokens, its cache as BHTC, its block ids."""
    toks, cache, ids = sequence(seed)
    return toks, kv.PagedKV(cache, "BHTC"), ids


def data_files(root: Path) -> list[Path]:
    """The chunk files under a bucket's data/."""
    return sorted((root / "data").rglob("*.safetensors"))


def rows(store) -> dict[str, int]:
    """key -> state of every row in the catalog."""
    return dict(store._catalog.query("SELECT key, state FROM chunks"))


def load_verified(store: kv.KVStore, seed: int) -> int:
    """Loads sequence `seed` into a fresh cache; returns tokens loaded, every one checked bit-exact."""
    toks, src, ids = sequence(seed)
    dst = make_cache("BHTC", seed=10_000 + seed)
    dst_ids = block_table(12, 24, seed + 1)
    loaded = store.get(toks, kv.PagedKV(dst, "BHTC"), dst_ids)
    if loaded:
        assert (reference(dst, "BHTC", dst_ids, 8, 0, loaded) == reference(src, "BHTC", ids, 8, 0, loaded)).all()
    return loaded


def check(store: kv.KVStore, seed: int) -> int:
    """Loads sequence `seed` into a fresh cache; returns tokens loaded (all verified bit-exact)."""
    toks, src, ids = sequence(seed)
    dst = make_cache("BHTC", seed=10_000 + seed)
    dst_ids = block_table(12, 24, seed + 1)
    held = store.lookup(toks)
    loaded = store.get(toks, kv.PagedKV(dst, "BHTC"), dst_ids)
    assert loaded == held, (seed, held, loaded)
    if loaded:
        assert (reference(dst, "BHTC", dst_ids, 8, 0, loaded) == reference(src, "BHTC", ids, 8, 0, loaded)).all()
    return loaded


if __name__ == "__main__":
    role, bucket, *rest = sys.argv[1:]
    if role == "write":
        cap = int(rest[2]) if len(rest) > 2 and rest[2] != "-" else None
        write(bucket, int(rest[0]), int(rest[1]), cap, *(rest[3:4] or [None]), *(map(float, rest[4:5])))
    elif role == "write_forever":
        write_forever(bucket)
    elif role == "write_then_stop":
        write_then_stop(bucket, rest[0])
    elif role == "check":
        with open_store(bucket) as s:
            print(sum(check(s, int(x)) for x in rest))
    else:
        raise SystemExit(f"unknown role {role}")
