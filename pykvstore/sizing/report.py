"""The table `pykvstore size` prints: capacity -> hit rate -> $ a month, the knee and the current capacity marked.

Runs on the caller's thread (the CLI, the dashboard, Bucket.size).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..recorder import Access
from ..sizes import format_size, parse_size
from .lru import EXACT_LIMIT, Profile, lru_profile
from .replay import SIMULATE_LIMIT, simulate

MONTH = 30 * 86400


class SizingError(InputError):
    """A capacity list or price that does not parse, or nothing recorded to size from."""


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
    if not (math.isfinite(tokens * per_month * price_per_mtok / 1e6)
            and math.isfinite(max(caps_l, default=0) / 1e9 * storage_price)):  # else $inf, and JSON's Infinity
        raise SizingError(f"price {price_per_mtok:g} or storage price {storage_price:g} is too large to compute with")
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

