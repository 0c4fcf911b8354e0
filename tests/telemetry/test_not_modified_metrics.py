"""not_modified answers are counted by source kind, in Prometheus and in DogStatsD."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from imagesvc.telemetry import names
from imagesvc.telemetry.metrics import FanOutMetrics, PrometheusMetrics
from tests.telemetry.test_detection_cache_metrics import RecordingStatsd


def test_not_modified_is_counted_in_both_backends():
    from imagesvc.telemetry.dogstatsd import DogStatsdMetrics

    statsd = RecordingStatsd()
    registry = CollectorRegistry()
    metrics = FanOutMetrics(PrometheusMetrics(registry), DogStatsdMetrics("imagesvc", statsd))
    for source in ("data", "url", "data"):
        metrics.not_modified(source)
    assert names.NOT_MODIFIED == "imagesvc_not_modified_total"
    assert registry.get_sample_value(names.NOT_MODIFIED, {"source": "data"}) == 2
    assert registry.get_sample_value(names.NOT_MODIFIED, {"source": "url"}) == 1
    assert statsd.increments == [
        ("not_modified", ["source:data"]),
        ("not_modified", ["source:url"]),
        ("not_modified", ["source:data"]),
    ]
