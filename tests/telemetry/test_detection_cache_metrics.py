"""Detection cache lookups are counted by result, in Prometheus and in DogStatsD."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from imagesvc.telemetry import names
from imagesvc.telemetry.metrics import FanOutMetrics, PrometheusMetrics


class RecordingStatsd:
    def __init__(self) -> None:
        self.increments: list[tuple[str, list[str]]] = []

    def increment(self, metric: str, tags=None) -> None:
        self.increments.append((metric, list(tags or [])))


def test_prometheus_counts_hits_and_misses():
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    for hit in (False, True, True):
        metrics.detection_cache(hit)
    value = registry.get_sample_value
    assert value(names.DETECTION_CACHE_LOOKUPS, {"result": "hit"}) == 2
    assert value(names.DETECTION_CACHE_LOOKUPS, {"result": "miss"}) == 1
    assert names.DETECTION_CACHE_LOOKUPS == "imagesvc_detection_cache_lookups_total"


def test_dogstatsd_counts_hits_and_misses_and_fan_out_reaches_both():
    from imagesvc.telemetry.dogstatsd import DogStatsdMetrics

    statsd = RecordingStatsd()
    registry = CollectorRegistry()
    metrics = FanOutMetrics(PrometheusMetrics(registry), DogStatsdMetrics("imagesvc", statsd))
    metrics.detection_cache(True)
    metrics.detection_cache(False)
    assert statsd.increments == [
        ("detection_cache.lookups", ["result:hit"]),
        ("detection_cache.lookups", ["result:miss"]),
    ]
    assert registry.get_sample_value(names.DETECTION_CACHE_LOOKUPS, {"result": "hit"}) == 1
