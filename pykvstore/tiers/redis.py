"""Shared tier: chunks in Redis or Valkey (one node or a Redis Cluster), seen by every replica.

Values are chunk files byte for byte, header included (namespace, key,
checksum), so a replica verifies a fetched chunk exactly as it verifies a
local file; a value that fails is a miss. A small metadata hash beside each
value (model, tag, tokens) shares its hash slot: keys are
"<prefix>:{<chunk key>}" and "<prefix>:{<chunk key>}:meta".

Writes go through a background thread in pipelined batches (a put only hands
off); reads are one pipelined round trip per batch (a cluster pipeline groups
by node). Every failure — server down, timeout, cluster slot down — turns
into misses and dropped writes with counters, never an exception in the
serving path; after one, the tier rests for `retry_after` seconds, then
reconnects by itself. A key of the wrong type (WRONGTYPE) is a miss for that
key only. The server's `maxmemory` with an LRU policy is the tier's capacity.

Nothing read back is trusted: a value longer than the caller's cap is never
transferred whole (GETRANGE), a malformed namespace index is left out, and
with a shared secret (`secret`, or $PYKVSTORE_REMOTE_SECRET) every value is
signed and verified (redis_values.py). A server that lost its data is
refilled: `touch` re-publishes local hits whose remote copy is gone
(rate-limited) and carries sliding TTLs over to the remote expiry, on the
writer thread. Which thread runs what: get_many, held_prefix, namespaces on
the caller's thread; put, add_namespace and touch only queue; the writer
thread ("pykvstore-redis", redis_writer.py) sends. The URL, its options and a cluster's nodes
are checked, and the client factory made, in redis_url.py.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

from ..errors import InputError
from ..sizes import parse_size
from .redis_url import _check_url_options, _redact, _redis, _scrub, client_factory  # noqa: F401 - importable here too
from .redis_values import TAG_BYTES, make_signer, parse_namespaces
from .redis_writer import RedisWriter

log = logging.getLogger("pykvstore")


@dataclass
class RemoteStats:
    hits: int = 0  # chunks fetched and verified
    misses: int = 0  # chunks asked for and not there (or not sound)
    bytes_read: int = 0
    bytes_written: int = 0
    puts: int = 0  # chunks written
    dropped: int = 0  # chunks not written: server unavailable or queue full
    errors: int = 0  # failed round trips
    rejected: int = 0  # values refused: over the size cap, wrong type, bad or missing signature
    refreshed: int = 0  # remote expiries extended by local hits (sliding TTL)
    republished: int = 0  # local hits written again because the server had lost them

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class RedisTier:
    """Args:
        url: "redis://[user:password@]host:port/db", "rediss://..." (TLS), or
            "redis+cluster://host:port[,host:port...]" / a list of "host:port"
            for a Redis Cluster.
        prefix: key prefix; one bucket per prefix.
        username, password: ACL user and password (override the URL's).
        ssl: TLS (also implied by rediss://).
        timeout: seconds for connecting and for each round trip.
        queue_bytes: chunk bytes waiting to be written; beyond it, puts are dropped.
        retry_after: seconds the tier rests after a failure before trying again.
        secret: shared secret (>= 16 bytes) with which replicas sign and verify
            every value; default $PYKVSTORE_REMOTE_SECRET, else values are unsigned.
        max_value_bytes: the largest value read when the caller gives no cap.
        republish_bytes_per_s: budget for re-publishing local hits the server lost.
        touch_interval: seconds between two checks of the same key by `touch`.
    """

    def __init__(self, url: Union[str, Sequence[str]], *, prefix: str = "pykvstore", username: Optional[str] = None,
                 password: Optional[str] = None, ssl: bool = False, timeout: float = 1.0,
                 queue_bytes: Union[int, str] = "512MiB", retry_after: float = 1.0, secret: Any = None,
                 max_value_bytes: Union[int, str] = "1GiB", republish_bytes_per_s: Union[int, str] = "64MiB",
                 touch_interval: float = 30.0) -> None:
        redis = _redis()
        self._signer = make_signer(secret)
        self._max_value = parse_size(max_value_bytes, "max_value_bytes")
        republish_rate = parse_size(republish_bytes_per_s, "republish_bytes_per_s")
        touch_interval = float(touch_interval)
        self._errors_t = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise InputError(f"remote prefix must be a non-empty string without braces, got {prefix!r}")
        self.prefix = prefix
        self.retry_after = retry_after
        self.stats = RemoteStats()
        self._stats_lock = threading.Lock()
        queue_limit = parse_size(queue_bytes, "queue_bytes")
        self._down_until = 0.0
        self._warned: set[str] = set()
        self._ns_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._batch_bytes = 64 << 20  # per read round trip
        self._value_size = 0  # the largest chunk value seen: sizes the read batches
        self._make, url = client_factory(url, username=username, password=password, ssl=ssl,
                                         timeout=timeout)
        self.client = None
        self._url, self._password = url, password  # what _connect's errors must not show
        self._connect(first=True)
        self._writer = RedisWriter(self, queue_limit, republish_rate, touch_interval)  # starts the writer thread

    # --- connection ------------------------------------------------------------
    def _connect(self, first: bool = False) -> bool:
        """(Re)creates the client and pings it. Wrong credentials are a configuration
        error and raise at construction; an unreachable server only sends the tier to rest."""
        redis = _redis()
        try:
            client = self._make()
            client.ping()
            self.client = client
            return True
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as e:
            if first:
                raise InputError(f"the Redis server refused the credentials: {e}") from None
            self._failed("auth", e)
        except redis.exceptions.ResponseError as e:
            if first and isinstance(e, redis.exceptions.NoPermissionError):  # an ACL user that may not PING
                raise InputError(f"the Redis user lacks a permission the tier needs: {e}") from None
            self._failed("connect", e)
        except self._errors_t as e:
            self._failed("connect", e)
        except (TypeError, ValueError) as e:  # URL options redis-py cannot take (an unknown name, a bad value)
            msg = _scrub(f"{type(e).__name__}: {e}", str(self._url), self._password)
            if first:
                raise InputError(f"the remote URL {_redact(self._url)} is not one redis-py can use ({msg})") from None
            self._failed("connect", RuntimeError(msg))
        return False

    def _available(self) -> bool:
        if self.client is not None and time.monotonic() >= self._down_until:
            return True
        if time.monotonic() < self._down_until:
            return False
        return self._connect()

    def count(self, **deltas: int) -> None:
        """Adds to the counters; the caller's thread and the writer thread both count."""
        with self._stats_lock:
            for name, n in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def _failed(self, what: str, err: Exception) -> None:
        self.count(errors=1)
        self._down_until = time.monotonic() + self.retry_after
        if what not in self._warned:
            self._warned.add(what)
            log.warning("Redis tier unavailable (%s: %s); serving from local tiers, retrying every %.1fs",
                        what, err, self.retry_after)

    def key(self, chunk_key: str) -> str:
        return f"{self.prefix}:{{{chunk_key}}}"

    # --- namespaces: so a replica with an empty bucket can answer lookup --------
    def add_namespace(self, model: str, digest: str, params: str) -> None:
        """Queues a namespace index entry; the writer thread sends it (a stopped server never blocks a put)."""
        self._writer.add_namespace(model, digest, params)

    def namespaces(self, model: str) -> dict[str, str]:
        """digest -> params (JSON) of the namespaces stored under `model` by any replica."""
        now = time.monotonic()
        cached = self._ns_cache.get(model)
        if cached and now - cached[0] < 5.0:
            return cached[1]
        if not self._available():
            return {}
        try:
            raw = self.client.hgetall(f"{self.prefix}:namespaces:{{{model}}}")
        except self._errors_t as e:
            self._failed("namespace", e)
            return {}
        found = parse_namespaces(raw) if isinstance(raw, dict) else {}
        self._ns_cache[model] = (now, found)
        return found

    # --- reads -----------------------------------------------------------------
    def _round_trip(self, what: str, command: str, keys: Sequence[str], *args: Any) -> Optional[list]:
        """One pipelined `command` per key; None when the tier is resting or the round trip fails.

        A command that fails alone (WRONGTYPE on one key) comes back as its
        exception in its slot: that key is a miss, the tier does not rest.
        """
        if not keys or not self._available():
            return None
        try:
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                getattr(pipe, command)(self.key(k), *args)
            out = pipe.execute(raise_on_error=False)
        except self._errors_t as e:
            self._failed(what, e)
            return None
        for i, r in enumerate(out):
            if isinstance(r, Exception):
                self._warn_once(f"bad:{what}", f"Redis refused a {command} of one key ({r}); a miss for that key")
                out[i] = None
        return out

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def _accept(self, chunk_key: str, value: Any, cap: int) -> Optional[Any]:
        """A value as read, unsigned and within `cap`, or None (counted as rejected)."""
        if not value:
            return None
        if len(value) > cap + (TAG_BYTES if self._signer else 0):
            self.count(rejected=1)
            self._warn_once("oversized", f"Redis value under {chunk_key[:16]} is larger than a chunk ({cap} bytes); a miss")
            return None
        if self._signer is not None:
            value = self._signer.verify(self.key(chunk_key), value)
            if value is None:
                self.count(rejected=1)
                self._warn_once("unsigned", f"Redis value under {chunk_key[:16]} has no valid signature; a miss")
                return None
        return value

    def get_many(self, keys: Sequence[str], max_bytes: Optional[int] = None) -> list[Optional[Any]]:
        """The values of the leading `keys` the server holds, None from the first miss on.

        Args:
            keys: chunk keys of a prefix, in order.
            max_bytes: the largest value that can be a chunk here (the caller
                knows its geometry); more is never read (GETRANGE stops one byte
                past it) and is a miss.

        One pipelined round trip per batch of about `batch_bytes` (sized from
        the values seen so far), so a long prefix of large chunks never sits in
        one reply; it stops at the first miss, since a prefix ends there.
        `misses` counts the keys from the first one absent, refused or lost
        in a failed round trip to the end (the chunks the caller asked for
        and did not get); nothing while the tier rests (nothing was asked).
        """
        cap = min(self._max_value, max_bytes) if max_bytes is not None else self._max_value
        last = cap + (TAG_BYTES if self._signer else 0)  # GETRANGE's end is inclusive: one byte over = too long
        out: list[Optional[Any]] = []
        while len(out) < len(keys):
            if not self._available():
                break  # resting: nothing is asked, so nothing is a miss
            per = max(1, int(self._batch_bytes // self._value_size)) if self._value_size else 1
            batch = keys[len(out) : len(out) + per]
            values = self._round_trip("get", "getrange", batch, 0, last)
            if values is None:
                self.count(misses=len(keys) - len(out))  # asked, and the round trip failed
                break
            self.count(bytes_read=sum(len(v) for v in values if v))
            values = [self._accept(k, v, cap) for k, v in zip(batch, values)]
            got = [v for v in values if v is not None]
            if got:
                self._value_size = max(len(v) for v in got)
            first_miss = next((i for i, v in enumerate(values) if v is None), None)
            out += values
            if first_miss is not None:
                self.count(misses=len(keys) - (len(out) - len(values)) - first_miss)
                break
        out = out[: len(keys)]
        for i, v in enumerate(out):
            if v is None:
                return out[:i] + [None] * (len(keys) - i)
        return out + [None] * (len(keys) - len(out))

    def held_prefix(self, keys: Sequence[str]) -> int:
        """How many leading keys the server holds (one pipelined EXISTS round trip)."""
        found = self._round_trip("exists", "exists", keys) or []
        n = 0
        while n < len(found) and found[n]:
            n += 1
        return n

    # --- writes (queued here, sent by the writer thread: redis_writer.py) -------
    def put(self, chunk_key: str, value: Any, ttl: Optional[float], meta: dict[str, str], owner: Any = None) -> bool:
        """Queues a chunk for writing; False (and counted as dropped) when the queue is full or closed.

        `value` is a bytes-like view kept alive by `owner` until it is sent.
        """
        return self._writer.put(chunk_key, value, ttl, meta, owner)

    def touch(self, keys: Sequence[str], ttl: Optional[float], load: Callable[[str], Optional[tuple]]) -> None:
        """Local hits: the writer thread checks each key's remote copy (at most once per
        `touch_interval`), extends its expiry by `ttl` (a sliding TTL), and re-publishes
        the ones the server lost, reading them with `load(key) -> (value, meta, owner[, (model,
        namespace, params)]) or None` (the namespace entry is written again with it)
        within `republish_bytes_per_s`. Returns at once; never raises.
        """
        self._writer.touch(keys, ttl, load)

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every queued write was sent (or dropped); False on timeout."""
        return self._writer.flush(timeout)

    @property
    def _touched(self) -> dict[str, float]:
        """chunk key -> when touch last queued it (the writer's; read by tests)."""
        return self._writer._touched

    def close(self, timeout: float = 10.0) -> None:
        self._writer.stop(timeout)
        if self.client is not None:
            try:
                self.client.close()
            except self._errors_t:
                pass
