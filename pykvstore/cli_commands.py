"""What each `pykvstore` subcommand does, and how its answer reads.

cli.py parses the command line and hands the parsed arguments to one
`cmd_*` function here, on the main thread of the `pykvstore` process; each
opens the bucket, does its one job, prints its answer (a table or, with
--json, the same data as JSON) and returns the exit code. Bad input raises
InputError (or BucketNotFound from the bucket), which cli.main turns into
exit code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from .bucket import Bucket
from .errors import InputError
from .sizes import format_duration, format_size, parse_duration

DAYS_PER_MONTH = 30


# --- output helpers ----------------------------------------------------------
def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; columns are (key, heading)."""
    cells = [[h for _, h in columns]] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def _money(dollars: float) -> str:
    """Dollars as a person reads them: to the cent from a cent up, two significant digits below
    ($288.00, $0.41, $0.0012), so a header and a table show one amount the same way."""
    if abs(dollars) >= 0.01 or dollars == 0:
        return f"${dollars:,.2f}"
    return f"${_two_digits(dollars)}"


def _two_digits(x: float) -> str:
    """A number below 1 to two significant digits, in plain decimals (0.0022, never 2.2e-03)."""
    import math

    return f"{x:.{max(2, 1 - math.floor(math.log10(abs(x))))}f}"


def _count(x: float) -> str:
    """A count worth reading: whole from 10 up, one decimal from 1, two significant digits below."""
    if x == 0:
        return "0"
    return f"{x:,.0f}" if x >= 10 else (f"{x:.1f}" if x >= 1 else _two_digits(x))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


class _Progress:
    """A progress bar on stderr, only when a person is watching."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.on = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.on or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def _bucket(args: argparse.Namespace) -> Bucket:
    return Bucket(args.path, create=False)


def _selectors(args: argparse.Namespace) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    for name in ("model", "tag", "namespace", "idle_longer_than", "created_before"):
        v = getattr(args, name, None)
        if v is not None:
            sel[name] = v
    if getattr(args, "key", None):
        sel["keys"] = args.key
    return sel


def _removed_text(verb: str, r: Any) -> str:
    text = f"{verb} {r.chunks} chunks, {r.tokens} tokens, {format_size(r.bytes)}"
    if getattr(r, "short_bytes", 0):  # a limit pins kept from being met (Bucket.shrink)
        text += (f"; {format_size(r.pinned_bytes)} pinned (or being written) keep it {format_size(r.short_bytes)} "
                 f"over the limit")
    return text


# --- commands ----------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        s = b.stats(args.price, args.stale_after)
    d = s.to_dict()
    lines = [
        f"bucket {s.path}",
        f"  capacity {format_size(s.capacity_bytes)}, used {format_size(s.used_bytes)} "
        f"({100 * s.used_bytes / max(s.capacity_bytes, 1):.1f}%), free {format_size(s.free_bytes)}",
        f"  {s.chunks} chunks, {s.tokens} tokens; pinned {s.pinned_chunks} chunks ({format_size(s.pinned_bytes)})",
        f"  policy {s.policy}; default ttl {format_duration(s.default_ttl) if s.default_ttl else 'none'} ({s.ttl_mode})",
        f"  this bucket avoided {s.tokens_avoided} prefill tokens, worth {_money(s.cost_avoided)} "
        f"at ${s.price_per_mtok:g}/M tokens",
        f"  written {format_size(s.bytes_written)}, read {format_size(s.bytes_read)}; evictions: "
        + ", ".join(f"{c} {e['chunks']}" for c, e in s.evictions.items()),
        "",
        _table([{**v, "model": m, "size": format_size(v["bytes"]),
                 "cost_avoided": None if v.get("cost_avoided") is None else _money(v["cost_avoided"])}
                for m, v in sorted(s.by_model.items())],
               [("model", "model"), ("chunks", "chunks"), ("tokens", "tokens"), ("size", "size"),
                ("hit_rate", "hit rate"), ("hit_rate_hour", "last hour"), ("hit_rate_day", "last day"),
                ("tokens_avoided", "tokens avoided"), ("cost_avoided", "cost avoided")]),
        "",
        _table([dict(t, size=format_size(t["bytes"]), idle=format_duration(t["idle_s"])) for t in s.by_tag],
               [("model", "model"), ("tag", "tag"), ("chunks", "chunks"), ("size", "size"), ("hits", "hits"),
                ("idle", "idle"), ("pinned_chunks", "pinned")]),
    ]
    w = s.would_have_served
    if w is not None:  # the 0 GB tier: what a bucket with room for everything would have served
        lines[5:5] = [f"  0 GB tier (shadow): would have served {w['tokens']:,.0f} of {w['prompt_tokens']:,} prompt tokens "
                      f"({w['hit_rate']:.1%}), worth ${w['cost']:,.2f}; `pykvstore size PATH` sizes a bucket"] + [
            f"    {m}: {v['hit_rate']:.1%} ({v['tokens']:,.0f} tokens)" for m, v in sorted(w["by_model"].items())]
    if s.stale:
        lines += ["", f"stale (not hit for {format_duration(s.stale_after)}): clear with "
                      f"`pykvstore clear PATH --model M --tag T`"]
        lines += [f"  {t['model']}  tag={t['tag'] or '-'}  {format_size(t['bytes'])}  idle {format_duration(t['idle_s'])}"
                  for t in s.stale]
    _emit(args, d, "\n".join(lines))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        if args.model is not None and args.model not in b.models():
            raise InputError(f"unknown model {args.model!r}; the bucket holds: {', '.join(b.models()) or 'nothing'}")
        rows = b.ls(model=args.model, tag=args.tag, idle_longer_than=args.idle_longer_than, sort=args.sort,
                    chunks=args.chunks, limit=args.limit)
    for r in rows:
        r["size"] = format_size(r["bytes"])
        r["idle"] = format_duration(r["idle_s"])
    cols = ([("key", "key"), ("model", "model"), ("tag", "tag"), ("index", "#"), ("size", "size"), ("hits", "hits"),
             ("idle", "idle"), ("pinned", "pinned")] if args.chunks else
            [("model", "model"), ("tag", "tag"), ("chunks", "chunks"), ("tokens", "tokens"), ("size", "size"),
             ("hits", "hits"), ("idle", "idle"), ("pinned", "pinned")])
    _emit(args, rows, _table(rows, cols) if rows else "(nothing)")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    sel = _selectors(args)
    if not sel and not args.all:
        raise InputError("clear needs a selector (--model, --tag, --namespace, --key, --idle-longer-than, "
                         "--created-before) or --all")
    with _bucket(args) as b:
        r = b.clear(include_pinned=args.include_pinned, **sel)
    _emit(args, r.to_dict(), _removed_text("cleared", r))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        r = b.gc()
    _emit(args, r.to_dict(), _removed_text("reclaimed", r))
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        r = b.resize(args.size)
        cap = b.capacity
    _emit(args, dict(r.to_dict(), capacity_bytes=cap),
          f"capacity {format_size(cap)}; " + _removed_text("evicted", r))
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        r = b.set_quota(args.model, None if args.size.lower() == "none" else args.size)
    _emit(args, r.to_dict(), f"quota for {args.model}: {args.size}; " + _removed_text("evicted", r))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    sel = _selectors(args)
    if not sel:
        raise InputError(f"{args.command} needs a selector (--model, --tag, --namespace or --key)")
    ttl: Any = "keep"
    if getattr(args, "ttl", None) is not None:
        ttl = None if args.ttl.lower() == "none" else args.ttl
    with _bucket(args) as b:
        keys = b.select_keys(**sel)
        n = b.pin(keys, True, ttl) if args.command == "pin" else b.pin(keys, False)
    _emit(args, {"chunks": n}, f"{args.command}ned {n} chunks")
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    sel = _selectors(args)
    if not sel:
        raise InputError("extend needs a selector (--model, --tag, --namespace or --key)")
    ttl = None if args.ttl.lower() == "none" else parse_duration(args.ttl, "ttl")
    with _bucket(args) as b:
        n = b.extend(b.select_keys(**sel), ttl)
    _emit(args, {"chunks": n}, f"{n} chunks now expire {'never' if ttl is None else 'in ' + format_duration(ttl)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        kwargs: dict[str, Any] = {}
        if args.ttl is not None:
            kwargs["ttl"] = None if args.ttl.lower() == "none" else args.ttl
        config = b.set_defaults(ttl_mode=args.ttl_mode, price_per_mtok=args.price, **kwargs)
    _emit(args, config, "\n".join(f"{k}: {v}" for k, v in sorted(config.items())))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    with _bucket(args) as b:
        r = b.fsck(repair=args.repair, progress=_Progress("fsck"))
    text = (f"checked {r['checked']} chunks: {r['ok']} ok, {len(r['missing'])} missing, "
            f"{len(r['damaged'])} damaged, {len(r['unindexed'])} files not in the catalog"
            + ("; repaired" if r["repaired"] else ("; run with --repair to fix" if r["problems"] else "")))
    _emit(args, r, text)
    return 1 if r["problems"] and not r["repaired"] else 0


def recompute_cost(tokens: int, reuses_per_day: float, price_per_mtok: float) -> float:
    """Dollars a month spent re-encoding a prefix of `tokens`, `reuses_per_day` times a day."""
    return tokens * reuses_per_day * DAYS_PER_MONTH * price_per_mtok / 1e6


def cmd_cost(args: argparse.Namespace) -> int:
    import math

    # nan passes every comparison and inf makes every amount inf: refuse both, as negative prices
    if args.tokens <= 0 or not (0 < args.reuses_per_day < math.inf) or not (0 <= args.price < math.inf) \
            or not (0 <= args.storage_price < math.inf):
        raise InputError("--tokens and --reuses-per-day must be positive, --price and --storage-price "
                         "non-negative, all finite")
    bpt: Optional[int] = None  # without a geometry only the recompute side is known
    if args.bytes_per_token is not None:
        bpt = args.bytes_per_token
    elif args.layers:
        from .layout import Geometry  # torch: only this command needs it

        g = (Geometry.mla(args.layers, args.latent_dim, args.dtype) if args.latent_dim else
             Geometry(args.layers, args.kv_heads, args.head_dim, args.dtype))
        bpt = g.chunk_bytes(1)
    if bpt is not None and bpt <= 0:
        raise InputError("--bytes-per-token must be positive")
    monthly = recompute_cost(args.tokens, args.reuses_per_day, args.price)
    recompute = (f"recomputing {args.tokens:,} tokens {args.reuses_per_day:,g} times a day at ${args.price:g}/M "
                 f"input tokens: {_money(monthly)} a month")
    if bpt is None:
        data = {"prefix_tokens": args.tokens, "reuses_per_day": args.reuses_per_day, "price_per_mtok": args.price,
                "recompute_cost_per_month": monthly, "kv_bytes": None, "bytes_per_token": None,
                "storage_cost_per_month": None, "storage_price_per_gb_month": args.storage_price,
                "break_even_reuses_per_month": None, "saving_per_month": None}
        _emit(args, data, recompute + "\nwhat storing its KV costs needs the model's geometry: --layers with "
              "--kv-heads/--head-dim or --latent-dim, or --bytes-per-token")
        return 0
    kv_bytes = args.tokens * bpt
    storage = kv_bytes / 1e9 * args.storage_price
    per_reuse = args.tokens * args.price / 1e6
    data = {"prefix_tokens": args.tokens, "reuses_per_day": args.reuses_per_day, "price_per_mtok": args.price,
            "recompute_cost_per_month": monthly, "kv_bytes": kv_bytes, "bytes_per_token": bpt,
            "storage_cost_per_month": storage, "storage_price_per_gb_month": args.storage_price,
            "break_even_reuses_per_month": storage / per_reuse if per_reuse else None,
            "saving_per_month": monthly - storage}
    text = (f"{recompute}\n"
            f"its KV: {format_size(kv_bytes)} ({bpt:,} bytes a token), {_money(storage)} a month to store "
            f"at ${args.storage_price:.2f}/GB-month\n"
            + (f"storing pays for itself after {_count(data['break_even_reuses_per_month'])} reuses a month; "
               if per_reuse else "recomputing is free at this price: storing never pays for itself; ")
            + f"saves {_money(data['saving_per_month'])} a month")
    _emit(args, data, text)
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    from .sizing import format_report, parse_capacities

    caps = parse_capacities(args.capacities) if args.capacities is not None else None
    with _bucket(args) as b:
        r = b.size(caps, policy=args.policy, price_per_mtok=args.price, storage_price=args.storage_price)
    _emit(args, r.to_dict(), format_report(r))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import serve

    serve(args.path, host=args.host, port=args.port, read_only=args.read_only, token=args.token,
          announce=lambda line: print(line, flush=True))
    return 0
