"""Lookup benchmark: `KVStore.lookup` of a 128K-token prompt, each figure beside the
implementation it replaced, measured in the same run, the two taking turns.

The scheduler asks for every waiting request, every step, with the prompt as it
has it: a Python list, an array.array("I") or a numpy array. A lookup is the
token conversion, the chunk keys (512 chained XXH3-128 digests as hex) and one
catalog question (how many leading keys are ready and alive). The baseline is
the same store with the previous key derivation (python-xxhash per chunk, then
.hex(): keys.chunk_keys_py) and the previous catalog query (IN lists of bound
keys: Catalog.ready_prefix_len_in) put back in place. Also timed: each part
alone, and a lookup whose second half is new (a conversation's next turn) and
one where nothing is held (every prompt unique).

    python benchmarks/bench_lookup.py [--rounds 30] [--dir /tmp] [--out FILE]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import pykvstore as kv
from common import BLOCK, CHUNK
from pykvstore.catalog import Catalog
from pykvstore.keys import as_tokens, chunk_keys_py
from pykvstore.store.namespaces import Namespaces

TOKENS = 128 * 1024
TARGETS_MS = {"list": 1.0, "array_array": 0.5, "numpy": 0.5}


def _old_keys(self: Namespaces, ns: Any, toks: Any) -> list[str]:
    """Namespaces.keys as it was: the Python chain, then .hex() per key."""
    return [k.hex() for k in chunk_keys_py(ns.digest, toks, self.chunk_tokens, self.hash)]


@contextmanager
def previous_implementation():
    """The key derivation and the catalog query lookup used before this change."""
    keys, prefix = Namespaces.keys, Catalog.ready_prefix_len
    Namespaces.keys, Catalog.ready_prefix_len = _old_keys, Catalog.ready_prefix_len_in
    try:
        yield
    finally:
        Namespaces.keys, Catalog.ready_prefix_len = keys, prefix


def _stats(v: list[float]) -> dict[str, float]:
    v = sorted(v)
    return {"min_ms": round(v[0] * 1e3, 3), "p10_ms": round(v[len(v) // 10] * 1e3, 3),
            "median_ms": round(statistics.median(v) * 1e3, 3)}


def _time(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": model, "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "numpy": np.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="rounds; each times every case, new and baseline in turn")
    ap.add_argument("--calls", type=int, default=5, help="calls per case per round")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    out: dict[str, Any] = {"bench": "lookup", "machine": machine(), "tokens": TOKENS, "chunk_tokens": CHUNK,
                           "chunks": TOKENS // CHUNK, "targets_ms": TARGETS_MS,
                           "baseline": "the same store with keys.chunk_keys_py (python-xxhash per chunk, .hex()) "
                                       "and Catalog.ready_prefix_len_in (IN lists of bound keys) in place",
                           "rounds": args.rounds, "calls_per_round": args.calls}
    work = Path(tempfile.mkdtemp(prefix="pykvstore-bench-lookup-", dir=args.dir))
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, 128000, TOKENS)
    next_turn = np.concatenate([prompt[: TOKENS // 2], rng.integers(0, 128000, TOKENS // 2)])
    unique = rng.integers(0, 128000, TOKENS)
    try:
        # tiny geometry (4 MiB for the 8,192 blocks): lookup cost is per chunk, not per byte
        small = [torch.zeros(TOKENS // BLOCK, 1, BLOCK, 16, dtype=torch.bfloat16)]
        with kv.KVStore(work / "bucket", model="bench/lookup", host_capacity=1) as s:
            paged = kv.PagedKV(small, dims="BHTC")
            kv.defaults.set(fsync=False)
            for end in range(CHUNK * 64, TOKENS + 1, CHUNK * 64):  # 64 chunks a put
                assert s.put(prompt[:end], paged, np.arange(end // BLOCK)) == end
            kv.defaults.set(fsync=True)
            as_list = prompt.tolist()
            cases: dict[str, tuple[Any, int]] = {
                "list": (as_list, TOKENS), "array_array": (array.array("I", as_list), TOKENS), "numpy": (prompt, TOKENS),
                "numpy_half_held": (next_turn, TOKENS // 2), "numpy_none_held": (unique, 0)}
            for tokens, want in cases.values():  # both implementations give the same answers
                assert s.lookup(tokens) == want
                with previous_implementation():
                    assert s.lookup(tokens) == want

            ns = s._names.candidates()[0]
            toks = as_tokens(prompt)
            keys = s._names.keys(ns, toks)
            with previous_implementation():
                assert s._names.keys(ns, toks) == keys  # byte-identical keys
            cat = s._catalog
            parts: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                "chunk_keys_hex": (lambda: s._names.keys(ns, toks), lambda: _old_keys(s._names, ns, toks)),
                "catalog_prefix_len": (lambda: cat.ready_prefix_len(keys, time.time()),
                                       lambda: cat.ready_prefix_len_in(keys, time.time())),
            }
            lat = {name: {"new": [], "baseline": []} for name in [*cases, *parts]}
            lat["as_tokens_numpy"] = {"new": []}
            lat["as_tokens_list"] = {"new": []}
            for r in range(args.rounds):
                order = ("new", "baseline") if r % 2 == 0 else ("baseline", "new")  # who goes first alternates
                for name, (tokens, _) in cases.items():
                    for which in order:
                        if which == "new":
                            lat[name]["new"] += _time(lambda: s.lookup(tokens), args.calls)
                        else:
                            with previous_implementation():
                                lat[name]["baseline"] += _time(lambda: s.lookup(tokens), args.calls)
                for name, (new, old) in parts.items():
                    for which in order:
                        lat[name][which] += _time(new if which == "new" else old, args.calls)
                lat["as_tokens_numpy"]["new"] += _time(lambda: as_tokens(prompt), args.calls)
                lat["as_tokens_list"]["new"] += _time(lambda: as_tokens(as_list), args.calls)
        results: dict[str, Any] = {}
        for name, runs in lat.items():
            row = {which: _stats(v) for which, v in runs.items()}
            if "baseline" in row:
                row["speedup_median"] = round(row["baseline"]["median_ms"] / row["new"]["median_ms"], 2)
            if name in TARGETS_MS:
                row["target_ms"] = TARGETS_MS[name]
                row["met_at_median"] = row["new"]["median_ms"] <= TARGETS_MS[name]
            results[name] = row
        out["lookup_128k"] = {k: results[k] for k in cases}
        out["parts"] = {k: results[k] for k in [*parts, "as_tokens_numpy", "as_tokens_list"]}
        out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
