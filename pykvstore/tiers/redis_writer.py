"""The Redis tier's writer: the queue of chunk writes, namespace entries and touched
keys, and the thread ("pykvstore-redis") that sends them in pipelined batches.

Why apart from redis.py: a put must never wait for the network, so writing is
its own job with its own lock and thread, while RedisTier (redis.py) owns the
connection, the reads and the counters the writer uses. Which thread runs what:
put, touch and add_namespace run on the caller's thread and only queue (never
wait for the server); flush and stop wait on the caller's thread; _run and
everything it calls (_send, _send_namespaces, _refresh) run on the writer
thread, where a failure is counted and logged once, never raised.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from .redis import RedisTier


class RedisWriter:
    """Queues writes for a RedisTier and sends them on one background thread.

    Args:
        tier: the tier whose client, counters and key names the writes use.
        queue_limit: chunk bytes waiting to be written; beyond it, puts are dropped.
        republish_rate: bytes per second for re-publishing local hits the server lost.
        touch_interval: seconds between two checks of the same key by `touch`.
    """

    def __init__(self, tier: "RedisTier", queue_limit: int, republish_rate: int, touch_interval: float) -> None:
        self._tier = tier
        self._republish_rate = republish_rate
        self._republish_budget = float(self._republish_rate)
        self._republish_at = time.monotonic()
        self._touch_interval = touch_interval
        self._touched: dict[str, float] = {}  # chunk key -> when touch last queued it
        self._touches: deque = deque()  # (chunk key, ttl, loader)
        self._pending_ns: dict[tuple[str, str], str] = {}  # (model, digest) -> params, sent by the writer
        self._lock = threading.Lock()
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._queue_limit = queue_limit
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._writing = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pykvstore-redis", daemon=True)
        self._thread.start()

    def add_namespace(self, model: str, digest: str, params: str) -> None:
        """RedisTier.add_namespace: queued for the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._pending_ns[(model, digest)] = params
            self._wake.notify()

    def put(self, chunk_key: str, value: Any, ttl: Optional[float], meta: dict[str, str], owner: Any = None) -> bool:
        """RedisTier.put: queued, or False (counted as dropped) when the queue is full or closed."""
        n = len(value)
        with self._lock:
            if self._closed or self._queued_bytes + n > self._queue_limit:
                self._tier.count(dropped=1)
                return False
            self._queue.append((chunk_key, value, ttl, meta, owner))
            self._tier._value_size = max(self._tier._value_size, n)
            self._queued_bytes += n
            self._wake.notify()
        return True

    def touch(self, keys: Sequence[str], ttl: Optional[float], load: Callable[[str], Optional[tuple]]) -> None:
        """RedisTier.touch: keys queued for a check on the writer thread, at most once per touch_interval."""
        now = time.monotonic()
        interval = self._touch_interval if ttl is None else min(self._touch_interval, ttl / 4)
        with self._lock:
            if self._closed:
                return
            for k in keys:
                if now - self._touched.get(k, -1e18) < interval or len(self._touches) >= 4096:
                    continue
                self._touched[k] = now
                self._touches.append((k, ttl, load))
            if len(self._touched) > 100_000:  # forget old entries; a forgotten key is only checked again
                self._touched = {k: t for k, t in self._touched.items() if now - t < interval}
            if self._touches:
                self._wake.notify()

    def flush(self, timeout: float = 30.0) -> bool:
        """RedisTier.flush: waits until every queued write was sent (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._writing or self._pending_ns or self._touches:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._queue or self._pending_ns or self._touches) and not self._closed:
                    self._wake.wait()
                if not (self._queue or self._pending_ns or self._touches) and self._closed:
                    return
                batch, size = [], 0
                while self._queue and (not batch or size < (64 << 20)) and len(batch) < 64:
                    item = self._queue.popleft()
                    batch.append(item)
                    size += len(item[1])
                self._queued_bytes -= size
                namespaces, self._pending_ns = self._pending_ns, {}
                touches = [self._touches.popleft() for _ in range(min(len(self._touches), 256))]
                self._writing = len(batch) + len(namespaces) + len(touches)
            try:
                if namespaces:
                    self._send_namespaces(namespaces)
                if batch:
                    self._send(batch, size)
                    batch = []  # counted by _send (put or dropped)
                if touches:
                    self._refresh(touches)
            except Exception as e:  # noqa: BLE001 - the writer thread must outlive anything
                self._tier.count(dropped=len(batch))  # a batch that raised before _send counted it
                self._tier._warn_once("writer", f"Redis writer: {type(e).__name__}: {e}")
            with self._lock:
                self._writing = 0
                self._idle.notify_all()

    def _send_namespaces(self, namespaces: dict[tuple[str, str], str]) -> None:
        if not self._tier._available():
            with self._lock:  # kept for the next round: a namespace written late is still useful
                for k, v in namespaces.items():
                    self._pending_ns.setdefault(k, v)
            return
        try:
            pipe = self._tier.client.pipeline(transaction=False)
            for (model, digest), params in namespaces.items():
                pipe.hset(f"{self._tier.prefix}:namespaces:{{{model}}}", digest, params)
            for r in pipe.execute(raise_on_error=False):
                if isinstance(r, Exception):
                    self._tier._warn_once("namespace-type", f"Redis refused a namespace index write ({r})")
        except self._tier._errors_t as e:
            self._tier._failed("namespace", e)

    def _value_out(self, chunk_key: str, value: Any) -> Any:
        """The value as stored: signed when there is a secret."""
        if self._tier._signer is None:
            return value
        return bytes(value) + self._tier._signer.tag(self._tier.key(chunk_key), value)

    def _send(self, batch: list, size: int) -> None:
        if not self._tier._available():
            self._tier.count(dropped=len(batch))
            return
        try:
            pipe = self._tier.client.pipeline(transaction=False)
            for chunk_key, value, ttl, meta, _ in batch:
                k = self._tier.key(chunk_key)
                px = None if ttl is None else max(1, int(ttl * 1000))
                pipe.set(k, self._value_out(chunk_key, value), px=px)
                pipe.hset(f"{k}:meta", mapping=meta)
                if px is not None:
                    pipe.pexpire(f"{k}:meta", px)
            results = pipe.execute(raise_on_error=False)
        except self._tier._errors_t as e:
            self._tier._failed("put", e)
            self._tier.count(dropped=len(batch))
            return
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # a metadata key of another type: the value itself (SET) still went through
            self._tier._warn_once("put-type", f"Redis refused {len(failed)} write(s) in a batch ({failed[0]})")
        self._tier.count(puts=len(batch), bytes_written=size)

    def _spend(self, n: int) -> bool:
        """Takes n bytes from the re-publish budget (refilled at republish_bytes_per_s, one second deep)."""
        now = time.monotonic()
        self._republish_budget = min(float(self._republish_rate),
                                     self._republish_budget + (now - self._republish_at) * self._republish_rate)
        self._republish_at = now
        if n > self._republish_budget:
            return False
        self._republish_budget -= n
        return True

    def _refresh(self, touches: list) -> None:
        """Extends remote expiries of touched keys and re-publishes the ones the server lost."""
        if not self._tier._available():
            return
        try:
            pipe = self._tier.client.pipeline(transaction=False)
            for chunk_key, ttl, _ in touches:
                k = self._tier.key(chunk_key)
                if ttl is None:
                    pipe.exists(k)
                else:
                    pipe.pexpire(k, max(1, int(ttl * 1000)))
                    pipe.pexpire(f"{k}:meta", max(1, int(ttl * 1000)))
            results = pipe.execute(raise_on_error=False)
        except self._tier._errors_t as e:
            self._tier._failed("touch", e)
            return
        lost, i = [], 0
        for chunk_key, ttl, load in touches:
            present = results[i]
            i += 1 if ttl is None else 2
            if isinstance(present, Exception) or present:
                self._tier.count(refreshed=0 if ttl is None else 1)
                continue
            lost.append((chunk_key, ttl, load))
        for chunk_key, ttl, load in lost:
            try:
                item = load(chunk_key)
            except Exception as e:  # noqa: BLE001 - a failed local read only skips the re-publish
                self._tier._warn_once("republish-load", f"could not read a chunk to re-publish: {e}")
                item = None
            if item is None:
                continue
            value, meta, owner = item[:3]
            if not self._spend(len(value)):
                with self._lock:
                    self._touched.pop(chunk_key, None)  # over budget: a later hit tries again
                continue
            if len(item) > 3:  # (model, digest, params): the index a lookup without geometry needs
                model, digest, params = item[3]
                self._send_namespaces({(model, digest): params})
            self._send([(chunk_key, value, ttl, meta, owner)], len(value))
            self._tier.count(republished=1)

    def stop(self, timeout: float = 10.0) -> None:
        """Sends what is queued (up to `timeout`), then ends the writer thread."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout)
