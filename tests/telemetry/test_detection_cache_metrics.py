"""Detection cache lookups, the small-face passes and abandoned Triton calls are counted, in
Prometheus and in DogStatsD."""

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


def fanned_out() -> tuple[FanOutMetrics, CollectorRegistry, RecordingStatsd]:
    """Prometheus and DogStatsD behind one FanOutMetrics, as the server wires them."""
    from imagesvc.telemetry.dogstatsd import DogStatsdMetrics

    statsd = RecordingStatsd()
    registry = CollectorRegistry()
    metrics = FanOutMetrics(PrometheusMetrics(registry), DogStatsdMetrics("imagesvc", statsd))
    return metrics, registry, statsd


def test_small_face_passes_are_counted_by_outcome_in_prometheus_and_dogstatsd():
    metrics, registry, statsd = fanned_out()
    for outcome in ("tiled", "skipped_small_output", "skipped_small_output"):
        metrics.small_face_pass(outcome)
    value = registry.get_sample_value
    assert names.SMALL_FACE_PASSES == "imagesvc_detection_small_face_passes_total"
    assert value(names.SMALL_FACE_PASSES, {"outcome": "skipped_small_output"}) == 2
    assert value(names.SMALL_FACE_PASSES, {"outcome": "tiled"}) == 1
    assert statsd.increments[0] == ("detection.small_face_passes", ["outcome:tiled"])


def test_abandoned_triton_calls_are_counted_by_model_in_prometheus_and_dogstatsd():
    metrics, registry, statsd = fanned_out()
    for model in ("blazeface_full_range", "blazeface_full_range", "autoquality"):
        metrics.triton_call_abandoned(model)
    value = registry.get_sample_value
    assert names.TRITON_CALLS_ABANDONED == "imagesvc_triton_calls_abandoned_total"
    assert value(names.TRITON_CALLS_ABANDONED, {"model": "blazeface_full_range"}) == 2
    assert value(names.TRITON_CALLS_ABANDONED, {"model": "autoquality"}) == 1
    assert statsd.increments[-1] == ("triton.calls_abandoned", ["model:autoquality"])
