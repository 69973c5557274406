"""`pykvstore dashboard`: a live storage page for one bucket, and the JSON API it uses.

Starlette + uvicorn (the `dashboard` extra). The page is static HTML/CSS/JS
served from the package: no build step, no CDN, charts drawn as SVG by the
page itself. Every number comes from the same Bucket.stats() as
`pykvstore stats --json`, read from the catalog, so it is live while other
processes fill the bucket.

Safe by default: binds to loopback; anything that changes the bucket (clear,
resize, pin) needs the token printed at start (header X-PyKVStore-Token), and
--read-only disables those calls. The bucket path is fixed at start; nothing
a client sends becomes a path. Bad requests get a 4xx with a message.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ..bucket import Bucket
from ..catalog import PERIOD
from ..errors import InputError

STATIC = Path(__file__).parent / "static"


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(bucket: Bucket, token: Optional[str], read_only: bool = False):
    """The Starlette app for `bucket`; token None with read_only False is refused."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    if not read_only and not token:
        raise InputError("a dashboard that can change the bucket needs a token")

    def number(request: Request, name: str, default: float) -> float:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            v = float(raw)
        except ValueError:
            raise _HttpError(400, f"{name} must be a number, got {raw!r}") from None
        if v < 0:
            raise _HttpError(400, f"{name} must not be negative, got {raw!r}")
        return v

    def authorize(request: Request) -> None:
        if read_only:
            raise _HttpError(403, "this dashboard is read-only")
        given = request.headers.get("x-pykvstore-token", "")
        if not given:
            raise _HttpError(401, "this action needs the token printed when the dashboard started")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _HttpError(403, "wrong token")

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            raise _HttpError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise _HttpError(400, "the request body must be a JSON object")
        return data

    def known(model: Optional[str], tag: Optional[str]) -> None:
        if model is not None and model not in bucket.models():
            raise _HttpError(404, f"unknown model {model!r}")
        if tag is not None:
            where, args = bucket.select(model=model, tag=tag)
            if not bucket.catalog.query(f"SELECT 1 FROM chunks WHERE {where} LIMIT 1", args):
                raise _HttpError(404, f"no chunks with tag {tag!r}" + (f" for model {model!r}" if model else ""))

    def text(data: dict[str, Any], name: str) -> Optional[str]:
        v = data.get(name)
        if v is not None and not isinstance(v, str):
            raise _HttpError(400, f"{name} must be a string")
        return v

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def stats(request: Request):
        price = number(request, "price", -1)
        stale = request.query_params.get("stale_after", "7d")
        s = bucket.stats(None if price < 0 else price, stale).to_dict()
        s["read_only"] = read_only
        s["now"] = time.time()
        return JSONResponse(s)

    async def history(request: Request):
        hours = number(request, "hours", 6)
        since = time.time() - hours * 3600
        rows = bucket.catalog.query(
            "SELECT model, period, name, value FROM counters WHERE period >= ? AND period > 0 "
            "AND name IN ('hit_tokens', 'miss_tokens') ORDER BY period", (int(since // PERIOD) * PERIOD,))
        series: dict[str, dict[int, dict[str, int]]] = {}
        for model, period, name, value in rows:
            series.setdefault(model, {}).setdefault(period, {"hit_tokens": 0, "miss_tokens": 0})[name] = value
        out = {m: [{"t": p, **v, "rate": v["hit_tokens"] / max(1, v["hit_tokens"] + v["miss_tokens"])}
                   for p, v in sorted(points.items())] for m, points in series.items()}
        return JSONResponse({"period": PERIOD, "models": out})

    async def ls(request: Request):
        q = request.query_params
        known(q.get("model"), None)
        return JSONResponse(bucket.ls(model=q.get("model"), tag=q.get("tag"), sort=q.get("sort", "bytes")))

    async def clear(request: Request):
        authorize(request)
        data = await body(request)
        model, tag = text(data, "model"), text(data, "tag")
        idle = text(data, "idle_longer_than")
        if model is None and tag is None and idle is None and not data.get("all"):
            raise _HttpError(400, "clear needs model, tag, idle_longer_than or all")
        known(model, tag)
        return JSONResponse(bucket.clear(model=model, tag=tag, idle_longer_than=idle,
                                         include_pinned=bool(data.get("include_pinned"))).to_dict())

    async def resize(request: Request):
        authorize(request)
        data = await body(request)
        if "capacity" not in data:
            raise _HttpError(400, "resize needs capacity, e.g. {\"capacity\": \"100GiB\"}")
        removed = bucket.resize(data["capacity"])
        return JSONResponse(dict(removed.to_dict(), capacity_bytes=bucket.capacity))

    async def pin(request: Request):
        authorize(request)
        data = await body(request)
        model, tag = text(data, "model"), text(data, "tag")
        if model is None and tag is None:
            raise _HttpError(400, "pin needs model or tag")
        known(model, tag)
        where, args = bucket.select(model=model, tag=tag)
        keys = [k for (k,) in bucket.catalog.query(f"SELECT key FROM chunks WHERE {where}", args)]
        return JSONResponse({"chunks": bucket.pin(keys, bool(data.get("pinned", True)))})

    async def http_error(request: Request, exc: Exception):
        if isinstance(exc, _HttpError):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if isinstance(exc, InputError):
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    routes = [
        Route("/", index),
        Route("/api/stats", stats),
        Route("/api/history", history),
        Route("/api/ls", ls),
        Route("/api/clear", clear, methods=["POST"]),
        Route("/api/resize", resize, methods=["POST"]),
        Route("/api/pin", pin, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {_HttpError: http_error, InputError: http_error, Exception: http_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(path: str, host: str = "127.0.0.1", port: int = 8470, read_only: bool = False,
          token: Optional[str] = None, announce=print) -> None:
    """Runs the dashboard until interrupted; announces the URL and the token first."""
    try:
        import uvicorn
    except ImportError:
        raise InputError('the dashboard needs its extra: pip install "pykvstore[dashboard]"') from None
    bucket = Bucket(path, create=False)
    token = None if read_only else (token or secrets.token_urlsafe(16))
    app = create_app(bucket, token, read_only)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections queue from the moment the URL is announced
    bound = sock.getsockname()[1]
    announce(f"pykvstore dashboard for {bucket.root} on http://{host}:{bound}/" +
             ("  (read-only)" if read_only else f"  token: {token}"))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        bucket.close()
