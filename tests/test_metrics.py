import urllib.request

import pytest

from workers import open_store
import test_bucket

prometheus_client = pytest.importorskip("prometheus_client")


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint_reports_the_bucket_and_latencies(bucket):
    from pykvstore import metrics

    with open_store(str(bucket)) as s:
        server, thread = metrics.serve(s, port=0, price_per_mtok=1.0)
        try:
            test_bucket.put_seq(s, 1, tag="bot/v1")
            test_bucket.load(s, 1)
            s.bucket.clear(tag="bot/v1")
            m = scrape(server.server_port)
        finally:
            server.shutdown()
    assert m['pykvstore_hit_tokens_total{model="mp/model"}'] == 96
    assert m['pykvstore_evicted_chunks_total{cause="manual"}'] == 3
    assert m["pykvstore_used_bytes"] == 0 and m["pykvstore_capacity_bytes"] > 0
    assert m['pykvstore_put_seconds_count{model="mp/model",tag="bot/v1"}'] == 1
    assert m['pykvstore_get_seconds_count{model="mp/model",tag=""}'] == 1
    assert m["pykvstore_cost_avoided_dollars_total"] == pytest.approx(96 / 1e6)
