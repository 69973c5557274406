"""LRU stack distances over prefix chains, exact or SHARDS-sampled (see the package docstring).

Runs on the caller's thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..recorder import KEY_BYTES, Access

EXACT_LIMIT = 400_000  # chunk accesses followed one by one; beyond, SHARDS sampling
HASH_SPACE = float(1 << 64)

@dataclass
class Profile:
    """Per chunk access: its LRU distance (bytes, inf when never seen), tokens, model.

    hit tokens at capacity C = sum of `weight` where `distance` <= C; requests'
    tokens (`tokens_by_model`) are exact, counted from every access.
    """

    distance: np.ndarray
    weight: np.ndarray
    model: np.ndarray  # index into `models`
    models: list[str]
    tokens_by_model: dict[str, int]
    tag: np.ndarray  # index into `tags` ((model, tag) pairs)
    tags: list[tuple[str, str]]
    tokens_by_tag: dict[tuple[str, str], int]
    chunk_accesses: int
    puts: int
    sample_rate: float
    working_set: float  # bytes of distinct chunks (estimated when sampled)
    first: float
    last: float

    def hit_tokens(self, capacities: Sequence[float]) -> dict[str, np.ndarray]:
        """model -> hit tokens at each capacity, plus "*" for all models."""
        out = {m: self._hits(self.model == i, capacities) for i, m in enumerate(self.models)}
        out["*"] = self._hits(slice(None), capacities)
        return out

    def hit_tokens_by_tag(self, capacities: Sequence[float]) -> dict[tuple[str, str], np.ndarray]:
        """(model, tag) -> hit tokens at each capacity."""
        return {t: self._hits(self.tag == i, capacities) for i, t in enumerate(self.tags)}

    def _hits(self, sel: Any, capacities: Sequence[float]) -> np.ndarray:
        caps = np.minimum(np.asarray(capacities, dtype=float), np.finfo(float).max)  # inf: everything seen
        d, w = self.distance[sel], self.weight[sel]
        order = np.argsort(d, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(w[order])])
        return cum[np.searchsorted(d[order], caps, side="right")]


class _Fenwick:
    __slots__ = ("tree", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree = [0.0] * (n + 1)

    def add(self, i: int, v: float) -> None:
        tree, n = self.tree, self.n
        while i <= n:
            tree[i] += v
            i += i & -i

    def prefix(self, i: int) -> float:
        tree, s = self.tree, 0.0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s


def lru_profile(accesses: Iterable[Access], exact_limit: int = EXACT_LIMIT) -> Profile:
    """Every chunk access's LRU distance in one pass (see the module docstring)."""
    acc = list(accesses)
    total = sum(a.n for a in acc)
    rate = 1.0 if total <= exact_limit else exact_limit / total
    threshold = rate * HASH_SPACE
    models: dict[str, int] = {}
    tokens_by_model: dict[str, int] = {}
    tags: dict[tuple[str, str], int] = {}
    tokens_by_tag: dict[tuple[str, str], int] = {}
    for a in acc:
        models.setdefault(a.stream.model, len(models))
        tokens_by_model[a.stream.model] = tokens_by_model.get(a.stream.model, 0) + a.tokens
        mt = (a.stream.model, a.stream.tag)
        tags.setdefault(mt, len(tags))
        tokens_by_tag[mt] = tokens_by_tag.get(mt, 0) + a.tokens
    cap = int(total * rate * 1.5) + 16 if rate < 1 else total + 1
    fen = _Fenwick(cap)
    last: dict[bytes, tuple[int, float]] = {}
    dist: list[float] = []
    weight: list[float] = []
    model: list[int] = []
    tag: list[int] = []
    held = 0.0  # bytes at latest positions = sum of the tree
    pos = 0
    inf = math.inf
    for a in acc:
        keys = [a.keys[i * KEY_BYTES: (i + 1) * KEY_BYTES] for i in range(a.n)]
        if rate < 1:
            keys = [k for k in keys if int.from_bytes(k, "little") < threshold]
            if not keys:
                continue
        size = a.stream.chunk_bytes / rate
        w = float(a.stream.chunk_tokens)
        mi = models[a.stream.model]
        ti = tags[(a.stream.model, a.stream.tag)]
        run = 0.0
        for k in keys:  # root first: the running maximum makes residency prefix-closed
            prev = last.get(k)
            d = inf if prev is None else held - fen.prefix(prev[0] - 1)
            run = d if d > run else run
            dist.append(run)
            weight.append(w)
            model.append(mi)
            tag.append(ti)
        for k in reversed(keys):  # tail first: the root ends up most recent
            prev = last.get(k)
            if prev is not None:
                fen.add(prev[0], -prev[1])
                held -= prev[1]
                del last[k]  # out of the tree: a re-lay below must not put it back at its old place
            pos += 1
            if pos > fen.n:  # the sample ran over its estimate: re-lay the tree
                fen, last, pos = _relay(last, fen.n * 2)
                pos += 1
            fen.add(pos, size)
            held += size
            last[k] = (pos, size)
    first = min((a.t for a in acc), default=0.0)
    end = max((a.t for a in acc), default=0.0)
    w_arr, m_arr = np.asarray(weight, dtype=float), np.asarray(model, dtype=np.int32)
    t_arr = np.asarray(tag, dtype=np.int32)
    if rate < 1:  # ratio estimator (SHARDS-adj): the sample stands for every chunk token of its (model, tag)
        for mt, ti in tags.items():
            full = sum(a.n * a.stream.chunk_tokens for a in acc if (a.stream.model, a.stream.tag) == mt)
            got = w_arr[t_arr == ti].sum()
            if got > 0:
                w_arr[t_arr == ti] *= full / got
    return Profile(np.asarray(dist, dtype=float), w_arr, m_arr, list(models), tokens_by_model,
                   t_arr, list(tags), tokens_by_tag, total, len(acc), rate, held, first, end)


def _relay(last: dict[bytes, tuple[int, float]], n: int) -> tuple[_Fenwick, dict[bytes, tuple[int, float]], int]:
    """A bigger tree with the same order of latest uses, renumbered from 1."""
    fen = _Fenwick(n)
    out: dict[bytes, tuple[int, float]] = {}
    for i, (k, (_, size)) in enumerate(sorted(last.items(), key=lambda kv: kv[1][0]), start=1):
        fen.add(i, size)
        out[k] = (i, size)
    return fen, out, len(out)

