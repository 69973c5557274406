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

Requests whose Host header names anything but the bound host (and, on
loopback, localhost) get 400: a page on another origin that rebinds its DNS
name to this address cannot read the bucket's paths, models and tags. Flags in
bodies are JSON booleans only; numbers in queries are finite and bounded.
Binding beyond loopback is announced with a warning (the read API has no
token). The server runs in uvicorn's event loop thread; Bucket calls are short
catalog queries.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..bucket import Bucket
from ..catalog import PERIOD
from .. import strict_json
from ..errors import InputError

STATIC = Path(__file__).parent / "static"
HOSTS_ENV = "PYKVSTORE_DASHBOARD_HOSTS"  # more Host names to accept (comma-separated), e.g. behind a proxy
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("pykvstore")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(bind: str) -> list[str]:
    """Host names a browser may use to reach a dashboard bound to `bind` (lower case, no port)."""
    names = set(LOOPBACK_NAMES)
    if not is_loopback(bind):
        names.add(bind.strip("[]").lower())
        if bind in ("0.0.0.0", "::", ""):
            for name in (socket.gethostname(), socket.getfqdn()):
                names.add(name.lower())
                try:
                    names.update(a[4][0].lower() for a in socket.getaddrinfo(name, None))
                except OSError:
                    pass
    names.update(h.strip().lower() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip())
    return sorted(names)


def _host_name(header: str) -> str:
    """The name part of a Host header: "[::1]:8470" -> "::1", "Example:80" -> "example"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: 400 for a request whose Host is not one the dashboard was bound to."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in self.allowed:
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": f"Host {host[:100]!r} is not this dashboard's"}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(bucket: Bucket, token: Optional[str], read_only: bool = False,
               allowed_hosts: Optional[list[str]] = None):
    """The Starlette app for `bucket`; token None with read_only False is refused.

    allowed_hosts: Host header names accepted (default: loopback names only).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    if not read_only and not token:
        raise InputError("a dashboard that can change the bucket needs a token")

    def number(request: Request, name: str, default: float, maximum: float) -> float:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            v = float(raw)
        except ValueError:
            raise _HttpError(400, f"{name} must be a number, got {raw[:40]!r}") from None
        if not math.isfinite(v) or not 0 <= v <= maximum:
            raise _HttpError(400, f"{name} must be a number from 0 to {maximum:g}, got {raw[:40]!r}")
        return v

    def flag(data: dict[str, Any], name: str, default: bool) -> bool:
        v = data.get(name, default)
        if not isinstance(v, bool):
            raise _HttpError(400, f"{name} must be true or false (a JSON boolean), got {json.dumps(v)[:40]}")
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
            data = strict_json.loads(await request.body() or b"{}", max_bytes=65536, max_containers=16)
        except ValueError as e:
            raise _HttpError(400, f"the request body is not small, plain JSON: {e}") from None
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
        price = number(request, "price", -1, 1e6) if "price" in request.query_params else -1
        stale = request.query_params.get("stale_after", "7d")
        s = bucket.stats(None if price < 0 else price, stale).to_dict()
        s["read_only"] = read_only
        s["now"] = time.time()
        return JSONResponse(s)

    async def size(request: Request):
        """The hit-rate-vs-capacity curve from the recorded traffic (`pykvstore size --json`)."""
        from starlette.concurrency import run_in_threadpool

        from ..sizing import SizingError

        price = number(request, "price", -1, 1e6) if "price" in request.query_params else -1
        try:  # a long history takes a moment: off the event loop (results are cached per history length)
            r = await run_in_threadpool(bucket.size, price_per_mtok=None if price < 0 else price)
        except SizingError as e:
            return JSONResponse({"error": str(e)})
        return JSONResponse(r.to_dict())

    async def history(request: Request):
        hours = number(request, "hours", 6, 24 * 366 * 10)
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
        everything, include_pinned = flag(data, "all", False), flag(data, "include_pinned", False)
        if model is None and tag is None and idle is None and not everything:
            raise _HttpError(400, "clear needs model, tag, idle_longer_than or all")
        known(model, tag)
        return JSONResponse(bucket.clear(model=model, tag=tag, idle_longer_than=idle,
                                         include_pinned=include_pinned).to_dict())

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
        pinned = flag(data, "pinned", True)
        return JSONResponse({"chunks": bucket.pin(keys, pinned)})

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
        Route("/api/size", size),
        Route("/api/ls", ls),
        Route("/api/clear", clear, methods=["POST"]),
        Route("/api/resize", resize, methods=["POST"]),
        Route("/api/pin", pin, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {_HttpError: http_error, InputError: http_error, Exception: http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return HostCheck(app, list(allowed_hosts) if allowed_hosts is not None else list(LOOPBACK_NAMES))


def serve(path: str, host: str = "127.0.0.1", port: int = 8470, read_only: bool = False,
          token: Optional[str] = None, announce=print) -> None:
    """Runs the dashboard until interrupted; announces the URL and the token first."""
    try:
        import uvicorn
    except ImportError:
        raise InputError('the dashboard needs its extra: pip install "pykvstore[dashboard]"') from None
    bucket = Bucket(path, create=False)
    token = None if read_only else (token or secrets.token_urlsafe(16))
    app = create_app(bucket, token, read_only, allowed_hosts_for(host))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections queue from the moment the URL is announced
    bound = sock.getsockname()[1]
    announce(f"pykvstore dashboard for {bucket.root} on http://{host}:{bound}/" +
             ("  (read-only)" if read_only else f"  token: {token}"))
    if not is_loopback(host):
        warning = (f"WARNING: the dashboard listens on {host}, beyond loopback: anyone who can reach this "
                   f"port reads the bucket's path, models, tags and statistics without a token"
                   + ("" if read_only else ", and the token travels in clear text") +
                   ". Prefer 127.0.0.1 behind an SSH tunnel or an authenticating proxy.")
        log.warning("%s", warning)
        print(warning, file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down gracefully, then raised the signal again
        pass
    finally:
        bucket.close()
