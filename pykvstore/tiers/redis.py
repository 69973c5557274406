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
reconnects by itself. The server's `maxmemory` with an LRU policy is the
tier's capacity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

from ..errors import InputError
from ..sizes import parse_size

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

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _redis():
    try:
        import redis
        import redis.cluster
    except ImportError:  # pragma: no cover - only without the extra
        raise ImportError("the Redis tier needs redis-py: pip install redis") from None
    return redis


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
    """

    def __init__(self, url: Union[str, Sequence[str]], *, prefix: str = "pykvstore", username: Optional[str] = None,
                 password: Optional[str] = None, ssl: bool = False, timeout: float = 1.0,
                 queue_bytes: Union[int, str] = "512MiB", retry_after: float = 1.0) -> None:
        redis = _redis()
        self._errors_t = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise InputError(f"remote prefix must be a non-empty string without braces, got {prefix!r}")
        self.prefix = prefix
        self.retry_after = retry_after
        self.stats = RemoteStats()
        self._stats_lock = threading.Lock()
        self._lock = threading.Lock()
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._queue_limit = parse_size(queue_bytes, "queue_bytes")
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._writing = 0
        self._closed = False
        self._down_until = 0.0
        self._warned: set[str] = set()
        self._ns_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._batch_bytes = 64 << 20  # per read round trip
        self._value_size = 0  # the largest chunk value seen: sizes the read batches
        common = dict(socket_timeout=timeout, socket_connect_timeout=timeout, username=username, password=password)
        if isinstance(url, (list, tuple)) or (isinstance(url, str) and url.startswith("redis+cluster://")):
            nodes = url if isinstance(url, (list, tuple)) else url[len("redis+cluster://"):].split(",")
            try:
                startup = [redis.cluster.ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in nodes)]
            except ValueError:
                raise InputError(f"cluster nodes must be host:port, got {nodes!r}") from None
            self._make = lambda: redis.cluster.RedisCluster(startup_nodes=startup, ssl=ssl, **common)
        elif isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            kwargs = {k: v for k, v in common.items() if v is not None}
            if ssl:
                kwargs["ssl"] = True
            self._make = lambda: redis.Redis.from_url(url, **kwargs)
        else:
            raise InputError(f"remote must be a redis://, rediss://, unix:// or redis+cluster:// URL "
                             f"or a list of host:port, got {url!r}")
        self.client = None
        self._connect(first=True)
        self._writer = threading.Thread(target=self._run, name="pykvstore-redis", daemon=True)
        self._writer.start()

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
            if first and ("NOAUTH" in str(e) or "WRONGPASS" in str(e)):
                raise InputError(f"the Redis server refused the credentials: {e}") from None
            self._failed("connect", e)
        except self._errors_t as e:
            self._failed("connect", e)
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
        if not self._available():
            return
        try:
            self.client.hset(f"{self.prefix}:namespaces:{{{model}}}", digest, params)
        except self._errors_t as e:
            self._failed("namespace", e)

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
        found = {k.decode(): v.decode() for k, v in raw.items()}
        self._ns_cache[model] = (now, found)
        return found

    # --- reads -----------------------------------------------------------------
    def _round_trip(self, what: str, command: str, keys: Sequence[str]) -> Optional[list]:
        """One pipelined `command` per key; None when the tier is resting or the round trip fails."""
        if not keys or not self._available():
            return None
        try:
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                getattr(pipe, command)(self.key(k))
            return pipe.execute()
        except self._errors_t as e:
            self._failed(what, e)
            return None

    def get_many(self, keys: Sequence[str]) -> list[Optional[bytes]]:
        """The values of the leading `keys` the server holds, None from the first miss on.

        One pipelined round trip per batch of about `batch_bytes` (sized from
        the values seen so far), so a long prefix of large chunks never sits in
        one reply; it stops at the first miss, since a prefix ends there.
        """
        out: list[Optional[bytes]] = []
        while len(out) < len(keys):
            per = max(1, int(self._batch_bytes // self._value_size)) if self._value_size else 1
            batch = keys[len(out) : len(out) + per]
            values = self._round_trip("get", "get", batch)
            if values is None:
                break
            got = [v for v in values if v is not None]
            if got:
                self._value_size = max(len(v) for v in got)
                self.count(bytes_read=sum(len(v) for v in got))
            out += values
            if len(got) < len(values):
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

    # --- writes ----------------------------------------------------------------
    def put(self, chunk_key: str, value: Any, ttl: Optional[float], meta: dict[str, str], owner: Any = None) -> bool:
        """Queues a chunk for writing; False (and counted as dropped) when the queue is full or closed.

        `value` is a bytes-like view kept alive by `owner` until it is sent.
        """
        n = len(value)
        with self._lock:
            if self._closed or self._queued_bytes + n > self._queue_limit:
                self.count(dropped=1)
                return False
            self._queue.append((chunk_key, value, ttl, meta, owner))
            self._value_size = max(self._value_size, n)
            self._queued_bytes += n
            self._wake.notify()
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every queued write was sent (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue and self._closed:
                    return
                batch, size = [], 0
                while self._queue and (not batch or size < (64 << 20)) and len(batch) < 64:
                    item = self._queue.popleft()
                    batch.append(item)
                    size += len(item[1])
                self._queued_bytes -= size
                self._writing = len(batch)
            self._send(batch, size)
            with self._lock:
                self._writing = 0
                self._idle.notify_all()

    def _send(self, batch: list, size: int) -> None:
        if not self._available():
            self.count(dropped=len(batch))
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for chunk_key, value, ttl, meta, _ in batch:
                k = self.key(chunk_key)
                px = None if ttl is None else max(1, int(ttl * 1000))
                pipe.set(k, value, px=px)
                pipe.hset(f"{k}:meta", mapping=meta)
                if px is not None:
                    pipe.pexpire(f"{k}:meta", px)
            pipe.execute()
        except self._errors_t as e:
            self._failed("put", e)
            self.count(dropped=len(batch))
            return
        self.count(puts=len(batch), bytes_written=size)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._writer.join(timeout)
        if self.client is not None:
            try:
                self.client.close()
            except self._errors_t:
                pass
