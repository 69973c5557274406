"""`pykvstore`: look after a bucket from the command line.

    pykvstore stats PATH            what the bucket holds, earns, and what is stale
    pykvstore ls PATH               entries per model and tag (or --chunks)
    pykvstore clear PATH ...        remove by model, tag, namespace, key, age (--all for everything)
    pykvstore gc PATH               reclaim expired chunks
    pykvstore resize PATH SIZE      new capacity for every process at once
    pykvstore quota PATH MODEL SIZE cap one model inside the bucket ("none" lifts it)
    pykvstore pin|unpin PATH ...    keep chunks through capacity pressure
    pykvstore extend PATH TTL ...   new expiry for matching chunks
    pykvstore config PATH ...       default TTL, TTL mode, price
    pykvstore fsck PATH [--repair]  check every file against the catalog and checksums
    pykvstore cost ...              what recomputing a prefix costs, and what storing it costs
    pykvstore size PATH             hit rate vs capacity from the recorded traffic, and the size to buy
    pykvstore dashboard PATH        a live storage page in the browser (the dashboard extra)

Exit codes: 0 done; 1 fsck found problems it did not repair, or an I/O error;
2 bad input (unknown bucket, model, size or duration) with one line on stderr.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Optional

from .bucket import BucketNotFound
from .cli_commands import (  # noqa: F401 - DAYS_PER_MONTH, recompute_cost: importable here too
    DAYS_PER_MONTH, cmd_clear, cmd_config, cmd_cost, cmd_dashboard, cmd_extend, cmd_fsck, cmd_gc, cmd_ls,
    cmd_pin, cmd_quota, cmd_resize, cmd_size, cmd_stats, recompute_cost)
from .errors import InputError

# This module parses the command line (its docstring is --help's epilog) and maps errors to exit
# codes; what each command does is in cli_commands.py.


# --- parser ------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pykvstore", description="Look after a pykvstore bucket.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, fn, help: str, path: bool = True, json_out: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        if path:
            sp.add_argument("path", help="the bucket directory")
        if json_out:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    def selectors(sp: argparse.ArgumentParser, ages: bool = True,
                  key_help: str = "chunk keys (hex): those chunks only") -> None:
        sp.add_argument("--model")
        sp.add_argument("--tag", help='origin tag ("" for untagged)')
        sp.add_argument("--namespace")
        sp.add_argument("--key", nargs="+", help=key_help)
        if ages:
            sp.add_argument("--idle-longer-than", dest="idle_longer_than", metavar="DURATION")
            sp.add_argument("--created-before", dest="created_before", metavar="ISO_TIME")

    for name in ("stats", "info"):
        sp = cmd(name, cmd_stats, "what the bucket holds, earns, and what is stale")
        sp.add_argument("--price", type=float, help="dollars per million input tokens (default: the bucket's)")
        sp.add_argument("--stale-after", dest="stale_after", default="7d", metavar="DURATION")
    sp = cmd("ls", cmd_ls, "entries per model and tag")
    sp.add_argument("--model")
    sp.add_argument("--tag")
    sp.add_argument("--idle-longer-than", dest="idle_longer_than", metavar="DURATION")
    sp.add_argument("--sort", default="bytes", choices=["bytes", "hits", "idle", "created"])
    sp.add_argument("--chunks", action="store_true", help="one line per chunk")
    sp.add_argument("--limit", type=int)
    sp = cmd("clear", cmd_clear, "remove chunks by selector")
    selectors(sp, key_help="chunk keys (hex); the chunks chained after them go too")
    sp.add_argument("--all", action="store_true", help="everything (pinned chunks only with --include-pinned)")
    sp.add_argument("--include-pinned", action="store_true")
    cmd("gc", cmd_gc, "reclaim expired chunks")
    sp = cmd("resize", cmd_resize, "set the capacity")
    sp.add_argument("size")
    sp = cmd("quota", cmd_quota, "cap one model's bytes")
    sp.add_argument("model")
    sp.add_argument("size", help='a size, or "none"')
    for name in ("pin", "unpin"):
        sp = cmd(name, cmd_pin, f"{name} chunks by selector")
        selectors(sp, ages=False)
        if name == "pin":
            sp.add_argument("--ttl", help='"none" (never expire) or a new TTL; default: keep the expiry')
    sp = cmd("extend", cmd_extend, "new expiry for chunks by selector")
    sp.add_argument("ttl", help='a duration from now, or "none"')
    selectors(sp, ages=False)
    sp = cmd("config", cmd_config, "bucket defaults")
    sp.add_argument("--ttl", help='default TTL of new chunks, or "none"')
    sp.add_argument("--ttl-mode", dest="ttl_mode", choices=["absolute", "sliding"])
    sp.add_argument("--price", type=float, help="dollars per million input tokens")
    sp = cmd("fsck", cmd_fsck, "check files against the catalog and checksums")
    sp.add_argument("--repair", action="store_true")
    sp = cmd("cost", cmd_cost, "what recomputing a prefix costs vs storing its KV", path=False)
    sp.add_argument("--tokens", type=int, required=True, help="tokens in the shared prefix")
    sp.add_argument("--reuses-per-day", dest="reuses_per_day", type=float, required=True,
                    help="times a day the prefix is sent again (sessions, requests)")
    sp.add_argument("--price", type=float, default=0.15, help="dollars per million input tokens (0.15)")
    sp.add_argument("--bytes-per-token", dest="bytes_per_token", type=int,
                    help="KV bytes a token (all layers, K and V), instead of a geometry; optional")
    sp.add_argument("--layers", type=int, help="model layers: with --kv-heads/--head-dim or --latent-dim, "
                    "sizes the KV (optional: without a geometry only the recompute cost is printed)")
    sp.add_argument("--kv-heads", dest="kv_heads", type=int, default=8, help="KV heads a layer (8)")
    sp.add_argument("--head-dim", dest="head_dim", type=int, default=128, help="head dimension (128)")
    sp.add_argument("--latent-dim", dest="latent_dim", type=int, help="MLA latent width (DeepSeek: 576)")
    sp.add_argument("--dtype", default="bfloat16", help="KV dtype (bfloat16)")
    sp.add_argument("--storage-price", dest="storage_price", type=float, default=0.10,
                    help="dollars per GB-month of storage (0.10)")
    sp = cmd("size", cmd_size, "hit rate vs capacity from the recorded traffic, and the size to buy")
    sp.add_argument("--price", help="dollars per million input tokens (default: the bucket's)")
    sp.add_argument("--storage-price", dest="storage_price", default="0.10", help="dollars per GB-month (0.10)")
    sp.add_argument("--capacities", help="sizes to tabulate, e.g. 1GiB,10GiB,100GiB (default: across the working set)")
    sp.add_argument("--policy", choices=["lru", "cost"], help="eviction policy to predict for (default: lru)")
    sp = cmd("dashboard", cmd_dashboard, "a live storage page for the bucket", json_out=False)
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    sp.add_argument("--port", type=int, default=8470, help="0 picks a free port")
    sp.add_argument("--read-only", dest="read_only", action="store_true", help="no clear, resize or pin")
    sp.add_argument("--token", help="the token actions need (default: a random one, printed)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except BucketNotFound as e:
        print(f"pykvstore: error: {e}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"pykvstore: error: {e}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as e:
        print(f"pykvstore: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
