"""`pykvstore` command line: look inside a bucket without opening it for a model.

    pykvstore info PATH [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from .catalog import Catalog
from .sizes import format_size


def bucket_info(path: str) -> dict[str, Any]:
    """What a bucket holds: capacity, use, and a breakdown per model and tag."""
    root = Path(path)
    if not (root / "catalog.sqlite").exists():
        raise SystemExit(f"{path} is not a pykvstore bucket (no catalog.sqlite)")
    config = json.loads((root / "bucket.json").read_text())
    cat = Catalog(str(root / "catalog.sqlite"))
    try:
        used, chunks = cat.usage()
        tags = cat._query("SELECT model, coalesce(tag, ''), count(*), sum(nbytes), sum(tokens), sum(hits) "
                          "FROM chunks WHERE state = 1 GROUP BY model, tag ORDER BY model, tag")
        return {
            "path": str(root.resolve()),
            "capacity_bytes": int(config["capacity"]),
            "used_bytes": used,
            "chunks": chunks,
            "models": cat.by_model(),
            "tags": [{"model": m, "tag": t, "chunks": n, "bytes": b, "tokens": k, "hits": h}
                     for m, t, n, b, k, h in tags],
            "namespaces": len(cat._query("SELECT digest FROM namespaces")),
        }
    finally:
        cat.close()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pykvstore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what a bucket holds")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    data = bucket_info(args.path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    pct = 100 * data["used_bytes"] / data["capacity_bytes"]
    print(f"bucket {data['path']}")
    print(f"  used {format_size(data['used_bytes'])} of {format_size(data['capacity_bytes'])} "
          f"({pct:.1f}%), {data['chunks']} chunks, {data['namespaces']} namespaces")
    for t in data["tags"]:
        print(f"  {t['model']:<28} tag={t['tag'] or '-':<24} {t['chunks']:>5} chunks "
              f"{t['tokens']:>8} tokens {format_size(t['bytes']):>10}  hits {t['hits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
