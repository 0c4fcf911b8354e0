"""Triton stopped mid-suite: ProcessImage still succeeds, degraded, and says so in the response,
in Prometheus and in DogStatsD (a real UDP listener stands in for the DataDog agent)."""

from __future__ import annotations

import socket

import grpc
import pytest
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from inference.sidecar import TritonSidecar
from tests.server import scenes
from tests.server.conftest import server_settings, wait_serving
from tests.server.test_health_and_metrics import scrape, value

pytestmark = [pytest.mark.triton]


def face_request() -> pb.ProcessImageRequest:
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=scenes.wide_scene().jpegsave_buffer(Q=90)),
        pipelines=[
            pb.Pipeline(
                operations=[
                    pb.Operation(
                        resize=pb.Resize(
                            type=pb.RESIZING_TYPE_FILL, width=256, height=256, gravity=gravity
                        )
                    ),
                    # SKIP: degrade instead of failing closed (test_detection_unavailable.py).
                    pb.Operation(
                        blur_detections=pb.BlurDetections(
                            sigma=5,
                            classes=["face"],
                            on_detection_unavailable=pb.DETECTION_UNAVAILABLE_POLICY_SKIP,
                        )
                    ),
                ]
            )
        ],
    )


def dogstatsd_lines(sock: socket.socket) -> list[str]:
    lines = []
    sock.settimeout(0.5)
    try:
        while True:
            lines += sock.recv(65535).decode().splitlines()
    except TimeoutError:
        return lines


async def test_triton_stopped_mid_suite_degrades_instead_of_failing(monkeypatch):
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", str(statsd.getsockname()[1]))
    sidecar = TritonSidecar()
    sidecar.launch()
    running = None
    try:
        running = await app.start(
            # No detection cache: the second request must reach the stopped Triton, not find
            # the first one's faces (a cache hit is right in production, not what is tested).
            server_settings(
                sidecar.grpc_url,
                dogstatsd_enabled=True,
                triton_timeout_s=0.5,
                detection_cache_entries=0,
            ),
            CollectorRegistry(),
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await wait_serving(channel)
            stub = pb_grpc.ImageServiceStub(channel)
            healthy = await stub.ProcessImage(face_request(), timeout=30)
            assert not healthy.degradations
            assert [d.class_name for d in healthy.detections] == ["face"]

            sidecar.stop()
            degraded = await stub.ProcessImage(face_request(), timeout=30)
            assert (degraded.width, degraded.height) == (256, 256)
            assert not degraded.detections
            reasons = {(d.reason, d.operation) for d in degraded.degradations}
            assert reasons == {
                ("DETECTION_UNAVAILABLE", "resize"),
                ("DETECTION_UNAVAILABLE", "blur_detections"),
            }
            assert "fell back to smart crop" in " ".join(d.message for d in degraded.degradations)
            # The breaker is open now: the next request does not even try Triton.
            again = await stub.ProcessImage(face_request(), timeout=30)
            assert "TRITON_CIRCUIT_OPEN" in again.degradations[0].message
            # The pod stays in rotation: ImageService health does not follow Triton.
            await wait_serving(channel, timeout=5)

        samples = scrape(running.metrics_port)
        assert value(samples, "imagesvc_degradations_total", reason="DETECTION_UNAVAILABLE") == 4
        lines = dogstatsd_lines(statsd)
        assert any(
            line.startswith("imagesvc.degradations:1|c|") and "op:blur_detections" in line
            for line in lines
        ), lines
        assert any(line.startswith("imagesvc.rpc.handled:1|c|") for line in lines), lines
    finally:
        if running is not None:
            await running.stop(1.0)
        sidecar.stop()
        statsd.close()
