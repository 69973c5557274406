"""Prometheus metrics for a bucket and a store (optional: `pip install prometheus_client`).

Bucket figures (bytes, chunks, hit and miss tokens, evictions by cause) are
read from the catalog at scrape time, so they are the same whichever process
serves them; put/get latency histograms come from the instrumented store.

    from pykvstore import metrics
    server = metrics.serve(store, port=9400)      # or metrics.instrument(store, registry)
"""

from __future__ import annotations

from typing import Any, Optional

from .bucket import CAUSES, Bucket


def _prometheus():
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("pykvstore.metrics needs prometheus_client: pip install prometheus_client") from None
    return prometheus_client


class BucketCollector:
    """Reads a bucket's stats at each scrape."""

    def __init__(self, bucket: Bucket, price_per_mtok: Optional[float] = None) -> None:
        self.bucket = bucket
        self.price = price_per_mtok

    def describe(self):
        return []  # collected lazily: nothing to register up front

    def collect(self):
        _prometheus()
        from prometheus_client import core
        s = self.bucket.stats(self.price)
        g = core.GaugeMetricFamily
        c = core.CounterMetricFamily
        yield g("pykvstore_capacity_bytes", "Bucket capacity", value=s.capacity_bytes)
        yield g("pykvstore_used_bytes", "Bytes held or reserved in the bucket", value=s.used_bytes)
        models = g("pykvstore_model_bytes", "Bytes held per model", labels=["model"])
        chunks = g("pykvstore_model_chunks", "Chunks held per model", labels=["model"])
        hit = c("pykvstore_hit_tokens", "Prompt tokens served from the bucket", labels=["model"])
        miss = c("pykvstore_miss_tokens", "Prompt tokens asked for and not held", labels=["model"])
        for model, m in s.by_model.items():
            models.add_metric([model], m["bytes"])
            chunks.add_metric([model], m["chunks"])
            hit.add_metric([model], m["hit_tokens"])
            miss.add_metric([model], m["miss_tokens"])
        tags = g("pykvstore_tag_bytes", "Bytes held per model and tag", labels=["model", "tag"])
        for t in s.by_tag:
            tags.add_metric([t["model"], t["tag"]], t["bytes"])
        ev = c("pykvstore_evicted_chunks", "Chunks removed, by cause", labels=["cause"])
        evb = c("pykvstore_evicted_bytes", "Bytes removed, by cause", labels=["cause"])
        for cause in CAUSES:
            ev.add_metric([cause], s.evictions[cause]["chunks"])
            evb.add_metric([cause], s.evictions[cause]["bytes"])
        yield from (models, chunks, hit, miss, tags, ev, evb)
        yield c("pykvstore_cost_avoided_dollars", "Prefill avoided, at the bucket's price", value=s.cost_avoided)


def instrument(store: Any, registry: Any = None, price_per_mtok: Optional[float] = None) -> Any:
    """Registers the bucket collector and put/get latency histograms for `store` (a KVStore or Bucket)."""
    pc = _prometheus()
    registry = registry if registry is not None else pc.REGISTRY
    bucket = store if isinstance(store, Bucket) else store.bucket
    registry.register(BucketCollector(bucket, price_per_mtok))
    if not isinstance(store, Bucket):
        hist = {op: pc.Histogram(f"pykvstore_{op}_seconds", f"Latency of KVStore.{op}", ["model", "tag"],
                                 registry=registry,
                                 buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
                for op in ("put", "get")}

        def observe(op: str, model: str, tag: Optional[str], seconds: float, tokens: int) -> None:
            hist[op].labels(model, tag or "").observe(seconds)

        store.observers.append(observe)
    return registry


def serve(store: Any, port: int = 9400, addr: str = "127.0.0.1", price_per_mtok: Optional[float] = None):
    """Starts an HTTP endpoint for processes that do not expose one; returns (server, thread)."""
    pc = _prometheus()
    registry = instrument(store, pc.CollectorRegistry(), price_per_mtok)
    return pc.start_http_server(port, addr=addr, registry=registry)
