"""Where the Redis tier connects: its URL, the URL's options and a cluster's nodes,
checked and turned into a client factory before the tier starts a thread.

Why apart from redis.py: a bad setting must be refused as an InputError on the
caller's thread, at construction, before anything connects or is written, and
every error here must name the remote with its credentials shown as *** (a URL
often carries a password, and errors end up in logs). Keeping these checks in
one place, away from the tier's reads, writes and writer thread, makes that
boundary easy to read and to test. Which thread runs what: `client_factory`
and the helpers run on the thread constructing the tier (KVStore's caller);
the factory it returns is called by RedisTier._connect, at construction and
then on whichever thread (the caller's or the writer) finds the tier's rest
over.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

from ..errors import InputError


def _check_url_options(url: str) -> None:
    """Refuses URL options that would break the tier: decode_responses turns the binary
    chunk values into str (a UnicodeDecodeError in the middle of a read); redis-py
    reads any value of it, "no" included, as on."""
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError as e:  # an unclosed [IPv6] host
        raise InputError(f"the remote URL {_redact(url)} is not valid: {e}") from None
    if "decode_responses" in query:
        raise InputError("the remote URL option decode_responses is not supported: chunk values are binary; "
                         "remove it from the URL")


def _redact(url: Any) -> str:
    """A remote URL (or node list) as an error may show it: what precedes the last '@' after
    the scheme (user:password, even with a raw '/' or '@' in the password) and any
    password= option read as ***. Errors name the URL so the operator sees which one."""
    if isinstance(url, (list, tuple)):
        return "[" + ", ".join(_redact(u) for u in url) + "]"
    text = str(url)
    at = text.rfind("@")
    if at >= 0:
        scheme = text.find("://")
        start = scheme + 3 if 0 <= scheme < at else 0
        text = text[:start] + "***" + text[at:]
    return repr(re.sub(r"(?i)(password=)[^&#]*", r"\1***", text))


def _scrub(message: str, url: str, password: Optional[str]) -> str:
    """`message` (redis-py's) without the URL's or the argument's password in it."""
    try:
        secrets = [password, urlsplit(url).password]
    except ValueError:
        secrets = [password]
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def _redis():
    try:
        import redis
        import redis.cluster
    except ImportError:  # pragma: no cover - only without the extra
        raise ImportError("the Redis tier needs redis-py: pip install redis") from None
    return redis


def client_factory(url: Union[str, Sequence[str]], *, username: Optional[str], password: Optional[str], ssl: bool,
                   timeout: float) -> tuple[Callable[[], Any], Union[str, Sequence[str]]]:
    """(make, url): a function that makes a new, unconnected redis-py client for `url`
    (one node, TLS or a unix socket, or a Redis Cluster from redis+cluster:// or a list
    of "host:port"), and the URL as used (redis:// with ssl=True becomes rediss://).

    Raises InputError for a setting the tier could never use: an unknown scheme,
    cluster nodes that are not host:port or carry credentials, decode_responses,
    ssl with a unix:// socket.
    """
    redis = _redis()
    common = dict(socket_timeout=timeout, socket_connect_timeout=timeout, username=username, password=password)
    if isinstance(url, (list, tuple)) or (isinstance(url, str) and url.startswith("redis+cluster://")):
        nodes = url if isinstance(url, (list, tuple)) else url[len("redis+cluster://"):].split(",")
        if any("@" in str(n) for n in nodes):  # else taken for part of a host name (and logged with it)
            raise InputError(f"cluster nodes must be host:port; credentials go in username= and password=, "
                             f"got {_redact(nodes)}")
        try:
            pairs = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in nodes)]
        except (ValueError, TypeError, AttributeError):  # no ':', a bad port, a node that is no string
            pairs = []
        if not pairs or any(not h or not 0 < p < 65536 for h, p in pairs):
            raise InputError(f"cluster nodes must be host:port, got {_redact(nodes)}") from None
        startup = [redis.cluster.ClusterNode(h, p) for h, p in pairs]
        make = lambda: redis.cluster.RedisCluster(startup_nodes=startup, ssl=ssl, **common)
    elif isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
        _check_url_options(url)
        if ssl and url.startswith("unix://"):
            raise InputError("ssl=True needs a redis:// or rediss:// URL: a unix:// socket has no TLS")
        if ssl and url.startswith("redis://"):  # redis-py takes TLS from the scheme (an ssl= argument is a TypeError)
            url = "rediss://" + url[len("redis://"):]
        kwargs = {k: v for k, v in common.items() if v is not None}
        make = lambda: redis.Redis.from_url(url, **kwargs)
    else:
        raise InputError(f"remote must be a redis://, rediss://, unix:// or redis+cluster:// URL "
                         f"or a list of host:port, got {_redact(url)}")
    return make, url
