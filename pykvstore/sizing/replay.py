"""Any eviction policy (the cost-aware one above all) replayed over the recorded puts.

Runs on the caller's thread, against an in-memory catalog (see the package docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..recorder import KEY_BYTES, Access
from .lru import HASH_SPACE

SIMULATE_LIMIT = 60_000  # chunk accesses replayed per capacity; beyond, a miniature simulation

def simulate(accesses: Iterable[Access], capacity: int, policy: Any = "cost",
             simulate_limit: int = SIMULATE_LIMIT) -> dict[str, float]:
    """model -> tokens a bucket of `capacity` bytes would have served, replaying each put.

    Each put: the held prefix is a hit (and touched, as the get before it
    would), held chunks are refreshed, new chunks are admitted in chain order,
    each after `policy.choose` has made room, exactly as the bucket does.
    Returns hit tokens per model and "*" for all.
    """
    from ..catalog import READY, Catalog, ChunkRow
    from ..policy import make_policy

    pol = make_policy(policy)
    acc = list(accesses)
    if capacity <= 0:
        return {**{a.stream.model: 0.0 for a in acc}, "*": 0.0}
    total = sum(a.n for a in acc)
    rate = 1.0 if total <= simulate_limit else simulate_limit / total
    threshold = rate * HASH_SPACE
    cap = capacity * rate
    cat = Catalog(":memory:")
    hits: dict[str, float] = {}
    full: dict[str, float] = {}  # chunk tokens offered, per model (all of them)
    seen: dict[str, float] = {}  # chunk tokens offered in the sample
    try:
        for step, a in enumerate(acc):
            now = float(step)
            s = a.stream
            keys = [a.keys[i * KEY_BYTES: (i + 1) * KEY_BYTES] for i in range(a.n)]
            full[s.model] = full.get(s.model, 0.0) + len(keys) * s.chunk_tokens
            index = list(range(len(keys)))
            if rate < 1:  # a sampled chunk's parent is its nearest sampled ancestor
                index = [i for i in index if int.from_bytes(keys[i], "little") < threshold]
            chain = [keys[i].hex() for i in index]
            seen[s.model] = seen.get(s.model, 0.0) + len(chain) * s.chunk_tokens
            if not chain:
                continue
            held = cat.ready_prefix_len(chain, now)
            hits[s.model] = hits.get(s.model, 0.0) + held * s.chunk_tokens
            with cat.transaction() as c:
                if held:
                    Catalog.touch(c, chain[:held], now)
                    Catalog.refresh(c, chain[:held], None, now)
                protect = set(chain)
                for j in range(held, len(chain)):
                    if c.execute("SELECT 1 FROM chunks WHERE key = ?", (chain[j],)).fetchone():
                        continue
                    if s.chunk_bytes > cap:
                        break
                    need = Catalog.totals(c)[0] + s.chunk_bytes - cap
                    if need > 0 and not pol.choose(c, int(math.ceil(need)), protect, None):
                        break
                    t = now + (j + 1) * 1e-6
                    Catalog.insert(c, ChunkRow(key=chain[j], parent=chain[j - 1] if j else s.namespace,
                                               namespace=s.namespace, model=s.model, chunk_index=index[j],
                                               tokens=s.chunk_tokens, nbytes=s.chunk_bytes, path="", created=t,
                                               last_access=t, tag=s.tag or None, state=READY))
    finally:
        cat.close()
    for m in hits:  # ratio estimator: the sample stands for every chunk token of its model
        hits[m] *= full[m] / seen[m] if seen.get(m) else 0.0
    hits["*"] = sum(hits.values())
    return hits

