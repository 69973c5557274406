"""Hit rate vs capacity from a bucket's recorded puts, and the size to buy.

Runs wherever the owner runs `pykvstore size` or the dashboard: pure Python and
numpy, no torch, no engine. Input is the access history (recorder.py): one
chain of chunk keys per put, root first.

LRU, exactly (Mattson). With pykvstore's LRU every put touches its whole chain
and evicts leaves by (last access, deeper first). A prefix is therefore never
less recent than any chunk chained after it, so the least recent chunk is
always a leaf and "LRU over leaves" is plain LRU over a total order in which a
put's root is its most recent chunk and its tail the least. Plain LRU has the
stack property even for chunks of different sizes: a chunk is resident in a
bucket of C bytes exactly when the bytes of distinct chunks used since its
last use, itself included, are at most C (evictions always take the bottom of
the stack, and what lies above a chunk only grows). One pass computes every
chunk access's distance with a Fenwick tree over access positions holding
each chunk's size at its latest position; the put's distances are all taken
against the state before the put, then its chain is pushed tail first, root
last. The resident set is prefix-closed (a chunk's prefix is above it), so a
chunk counts as a hit at capacity C when the largest distance along its chain
up to it is <= C; that running maximum is what each access contributes.

Beyond `exact_limit` chunk accesses, SHARDS: only chunks whose key (already a
uniform hash) falls under a threshold R are followed, their sizes and
distances scaled by 1/R. Sampling by chunk rather than by chain root is
deliberate: the prefix property above makes a chunk's own distance decide its
residency, while a Zipf workload of a few dozen system prompts has so few
roots that sampling by root would keep or drop most of the traffic at once.

Cost-aware: no stack property, so the recorded stream is replayed at each
capacity asked for, against an in-memory catalog and pykvstore.policy's own
CostAware (the bucket's eviction code, not a model of it). Beyond
`simulate_limit` chunk accesses, a miniature simulation at capacity C x R of
the chunks sampled as above, each chained to its nearest sampled ancestor
(so tails still go first) and keeping its real position for the cost.

Which thread: all of it runs on the caller's (the CLI's or dashboard's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import InputError
from .recorder import KEY_BYTES, Access
from .sizes import format_size, parse_size

EXACT_LIMIT = 400_000  # chunk accesses followed one by one; beyond, SHARDS sampling
SIMULATE_LIMIT = 60_000  # chunk accesses replayed per cost-aware capacity; beyond, sampled chains
MONTH = 30 * 86400
_HASH_SPACE = float(1 << 64)


class SizingError(InputError):
    """A capacity list or price that does not parse, or nothing recorded to size from."""


# --- LRU stack distances --------------------------------------------------------
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
    threshold = rate * _HASH_SPACE
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


# --- cost-aware (and any policy): replay against an in-memory catalog ------------
def simulate(accesses: Iterable[Access], capacity: int, policy: Any = "cost",
             simulate_limit: int = SIMULATE_LIMIT) -> dict[str, float]:
    """model -> tokens a bucket of `capacity` bytes would have served, replaying each put.

    Each put: the held prefix is a hit (and touched, as the get before it
    would), held chunks are refreshed, new chunks are admitted in chain order,
    each after `policy.choose` has made room, exactly as the bucket does.
    Returns hit tokens per model and "*" for all.
    """
    from .catalog import READY, Catalog, ChunkRow
    from .policy import make_policy

    pol = make_policy(policy)
    acc = list(accesses)
    if capacity <= 0:
        return {**{a.stream.model: 0.0 for a in acc}, "*": 0.0}
    total = sum(a.n for a in acc)
    rate = 1.0 if total <= simulate_limit else simulate_limit / total
    threshold = rate * _HASH_SPACE
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


# --- the recommendation ---------------------------------------------------------
def knee(xs: Sequence[float], ys: Sequence[float]) -> int:
    """Index of the knee of a rising, flattening curve (Kneedle: farthest above the chord)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) < 3 or x[-1] <= x[0] or y[-1] <= y[0]:
        return len(x) - 1
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y[0]) / (y[-1] - y[0])
    return int(np.argmax(yn - xn))


def nice_size(n: float) -> int:
    """Rounds a capacity up to two significant digits of its unit (MiB or GiB)."""
    unit = 1 << 30 if n >= 1 << 30 else 1 << 20
    v = n / unit
    if v <= 0:
        return unit
    step = 10 ** math.floor(math.log10(v)) / 10 if v >= 10 else 0.1 if v >= 1 else 0.01
    return int(math.ceil(v / step) * step * unit)


@dataclass
class Row:
    capacity: int
    hit_rate: float  # token hit rate (LRU, or the simulated policy)
    hit_tokens: float
    by_model: dict[str, float]  # model -> token hit rate
    recompute_per_month: float  # $ of prefill avoided, at the recorded rate of traffic
    storage_per_month: float
    net_per_month: float
    lru_hit_rate: float
    marks: list[str] = field(default_factory=list)  # "knee", "current"


@dataclass
class SizingReport:
    policy: str
    puts: int
    chunk_accesses: int
    tokens: int
    window_seconds: float
    sample_rate: float
    working_set: int
    max_hit_rate: float  # with room for everything seen
    would_have_served: dict[str, Any]  # tokens and $ a bucket of the working set would have served
    price_per_mtok: float
    storage_price_per_gb_month: float
    current_capacity: Optional[int]
    recommended: int
    rows: list[Row]
    curve: list[tuple[int, float]]  # (capacity, LRU token hit rate) for charts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_capacities(text: str) -> list[int]:
    """'1GiB,10GiB' -> bytes, ascending, no duplicates; SizingError on anything else."""
    out = set()
    for part in str(text).split(","):
        if not part.strip():
            raise SizingError(f"capacities {text!r}: an empty item; write them like '1GiB,10GiB,100GiB'")
        try:
            out.add(parse_size(part.strip(), "capacity"))
        except InputError as e:
            raise SizingError(str(e)) from None
    return sorted(out)


def check_price(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SizingError(f"{what} {value!r} is not a number (dollars, like 0.15)") from None
    if not math.isfinite(v) or v < 0:
        raise SizingError(f"{what} must be a non-negative number of dollars, got {value!r}")
    return v


def size(accesses: Iterable[Access], *, capacities: Optional[Sequence[int]] = None, policy: str = "lru",
         price_per_mtok: float = 0.15, storage_price: float = 0.10, current_capacity: Optional[int] = None,
         exact_limit: int = EXACT_LIMIT, simulate_limit: int = SIMULATE_LIMIT) -> SizingReport:
    """The table `pykvstore size` prints: capacity -> hit rate -> $ per month, knee and current marked.

    Money is per 30-day month at the rate the history was recorded
    (tokens per second over its window); storage at `storage_price` $ per GB
    (10^9 bytes) per month. Raises SizingError when there is nothing to size from.
    """
    acc = list(accesses)
    if not any(a.n for a in acc):
        raise SizingError("no recorded traffic to size from: serve some requests through the bucket first")
    price_per_mtok = check_price(price_per_mtok, "price")
    storage_price = check_price(storage_price, "storage price")
    prof = lru_profile(acc, exact_limit)
    tokens = sum(prof.tokens_by_model.values())
    window = max(prof.last - prof.first, 1.0)
    per_month = MONTH / window
    ws = int(prof.working_set)

    # the LRU curve, dense, for the knee and the chart
    grid = np.linspace(0, max(ws, 1), 201)[1:]
    lru_all = prof.hit_tokens(grid)["*"]
    k = knee(np.concatenate([[0.0], grid]), np.concatenate([[0.0], lru_all]))
    recommended = nice_size(grid[max(k - 1, 0)]) if k > 0 else nice_size(grid[0])
    if lru_all[-1] <= 0:
        recommended = 0  # no prefix was ever reused: a bucket would serve nothing
    if capacities is None:
        caps = {nice_size(ws * f) for f in (0.05, 0.1, 0.25, 0.5, 1.0)} | {recommended}
    else:
        caps = set(int(c) for c in capacities)
    if current_capacity is not None:
        caps.add(int(current_capacity))
    caps_l = sorted(c for c in caps if c >= 0)
    lru = prof.hit_tokens(caps_l)
    if policy == "lru":
        hit = lru
    else:
        sims = [simulate(acc, c, policy, simulate_limit) for c in caps_l]
        hit = {m: np.asarray([s.get(m, 0.0) for s in sims]) for m in prof.models + ["*"]}
    rows = []
    for i, c in enumerate(caps_l):
        h = float(hit["*"][i])
        recompute = h * per_month * price_per_mtok / 1e6
        storage = c / 1e9 * storage_price
        marks = (["knee"] if c == recommended and recommended else []) + (["current"] if c == current_capacity else [])
        rows.append(Row(c, h / tokens if tokens else 0.0, h,
                        {m: float(hit[m][i]) / prof.tokens_by_model[m] if prof.tokens_by_model[m] else 0.0
                         for m in prof.models},
                        recompute, storage, recompute - storage, float(lru["*"][i]) / tokens if tokens else 0.0, marks))
    served = would_have_served(prof, price_per_mtok)
    return SizingReport(policy if isinstance(policy, str) else getattr(policy, "name", "custom"),
                        prof.puts, prof.chunk_accesses, tokens, window, prof.sample_rate, ws,
                        served["hit_rate"], served, price_per_mtok, storage_price,
                        current_capacity, recommended, rows,
                        [(int(c), float(h) / tokens if tokens else 0.0) for c, h in zip(grid, lru_all)])


def would_have_served(prof: Profile, price_per_mtok: float, capacity: float = math.inf) -> dict[str, Any]:
    """What a bucket of `capacity` (default: room for everything seen) would have served: tokens, rate, $."""
    def one(hit: float, tokens: int) -> dict[str, float]:
        return {"tokens": hit, "prompt_tokens": tokens, "hit_rate": hit / tokens if tokens else 0.0,
                "cost": hit * price_per_mtok / 1e6}

    by_model = prof.hit_tokens([capacity])
    by_tag = prof.hit_tokens_by_tag([capacity])
    total = sum(prof.tokens_by_model.values())
    out = one(float(by_model["*"][0]), total)
    out["by_model"] = {m: one(float(by_model[m][0]), prof.tokens_by_model[m]) for m in prof.models}
    out["by_tag"] = [dict(model=m, tag=t, **one(float(by_tag[(m, t)][0]), prof.tokens_by_tag[(m, t)]))
                     for m, t in prof.tags]
    return out


def format_report(r: SizingReport) -> str:
    """The table, one row per capacity, the knee and the current capacity marked."""
    lines = [f"{r.puts:,} puts, {r.tokens:,} prompt tokens over {_span(r.window_seconds)}; "
             f"working set {format_size(r.working_set)}"
             + (f" (sampled at {r.sample_rate:.1%})" if r.sample_rate < 1 else ""),
             f"with room for everything: {r.max_hit_rate:.1%} of prompt tokens served from the bucket",
             f"policy {r.policy}; recompute at ${r.price_per_mtok:g}/M tokens, storage at "
             f"${r.storage_price_per_gb_month:g}/GB-month; $ per 30-day month at this traffic", ""]
    head = f"{'capacity':>12}  {'hit rate':>8}  {'recompute avoided':>17}  {'storage':>10}  {'net saving':>11}"
    lines.append(head)
    for row in r.rows:
        mark = "  <- " + ", ".join("recommended (knee)" if m == "knee" else "current" for m in row.marks) if row.marks else ""
        lines.append(f"{format_size(row.capacity):>12}  {row.hit_rate:>8.1%}  {_money(row.recompute_per_month):>17}  "
                     f"{_money(row.storage_per_month):>10}  {_money(row.net_per_month):>11}{mark}")
    if not r.recommended:
        lines.append("no prompt reused a prefix recorded before it: a bucket would serve nothing yet")
    if len({m for row in r.rows for m in row.by_model}) > 1:
        lines.append("")
        for m in sorted({m for row in r.rows for m in row.by_model}):
            lines.append(f"  {m}: " + "  ".join(f"{format_size(row.capacity)} {row.by_model.get(m, 0):.1%}"
                                                for row in r.rows))
    return "\n".join(lines)


def _money(v: float) -> str:
    return f"-${-v:,.2f}" if v < 0 else f"${v:,.2f}"


def _span(seconds: float) -> str:
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f} {unit}"
    return f"{seconds:.0f} seconds"

