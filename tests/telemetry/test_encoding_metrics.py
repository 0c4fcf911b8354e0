"""Encodes per image and achieved DSSIM are recorded per format and method, from a real
request through the engine (Prometheus) and to DogStatsD."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from imagesvc import vips
from imagesvc.engine import Engine
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry import names
from imagesvc.telemetry.metrics import PrometheusMetrics
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import jpeg, textured


class RecordingStatsd:
    def __init__(self) -> None:
        self.distributions: list[tuple[str, float, list[str]]] = []

    def distribution(self, metric: str, value: float, tags=None) -> None:
        self.distributions.append((metric, value, list(tags or [])))


def run(engine: Engine, settings: Settings, output: pb.OutputOptions):
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=jpeg(textured(320, 240), Q=95)), output=output
    )
    request = parse_process_request(msg, settings, frozenset())
    return asyncio.run(engine.process(request, time.monotonic() + 60))


def test_a_dssim_search_is_observed_with_its_encodes_and_dssim():
    settings = Settings(workers=1)
    vips.configure(settings)
    registry = CollectorRegistry()
    engine = Engine(settings, None, PrometheusMetrics(registry))
    try:
        aq = pb.Autoquality(method=pb.AUTOQUALITY_METHOD_DSSIM, target=0.01, min_quality=30)
        result = run(
            engine, settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, autoquality=aq)
        )
        run(engine, settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP))
    finally:
        engine.close()
    value = registry.get_sample_value
    labels = {"format": "jpeg", "method": "dssim"}
    assert value(f"{names.ENCODES_PER_IMAGE}_count", labels) == 1
    assert value(f"{names.ENCODES_PER_IMAGE}_sum", labels) == result.encoding.encodes
    assert value(f"{names.ACHIEVED_DSSIM}_sum", labels) == result.encoding.achieved_dssim
    fixed = {"format": "webp", "method": "none"}
    assert value(f"{names.ENCODES_PER_IMAGE}_sum", fixed) == 1
    assert value(f"{names.ACHIEVED_DSSIM}_count", fixed) is None


def test_dogstatsd_gets_both_distributions_with_tags():
    from imagesvc.telemetry.dogstatsd import DogStatsdMetrics

    statsd = RecordingStatsd()
    metrics = DogStatsdMetrics("imagesvc", statsd)
    metrics.encoding("avif", "dssim", 4, 0.011)
    metrics.encoding("jpeg", "none", 1, None)
    assert statsd.distributions == [
        ("encoding.encodes", 4, ["format:avif", "method:dssim"]),
        ("encoding.achieved_dssim", 0.011, ["format:avif", "method:dssim"]),
        ("encoding.encodes", 1, ["format:jpeg", "method:none"]),
    ]
