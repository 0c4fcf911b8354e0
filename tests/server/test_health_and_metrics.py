"""Health, reflection, Prometheus metrics and the CLI against the real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from imagesvc.v1 import image_service_pb2 as pb
from tests.server import scenes

pytestmark = [pytest.mark.triton]
REPO = Path(__file__).resolve().parents[2]


async def test_health_per_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "imagesvc.v1.ImageService", "imagesvc.v1.Inference"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"imagesvc.v1.ImageService", "grpc.health.v1.Health"} <= names


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def idle_scrape(port: int) -> dict:
    """A scrape taken when no image is in progress (an earlier test's cancelled request may
    still be stopping), so deltas count only this test's requests."""
    for _ in range(300):
        samples = await asyncio.to_thread(scrape, port)
        if value(samples, "imagesvc_images_in_progress") == 0:
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError("images stayed in progress for 30 s")


async def test_metrics_count_rpcs_steps_inference_and_errors(stub, service):
    before = await idle_scrape(service.metrics_port)
    source = scenes.astronaut().jpegsave_buffer()
    await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[
                pb.Pipeline(
                    operations=[
                        pb.Operation(
                            resize=pb.Resize(
                                type=pb.RESIZING_TYPE_FILL,
                                width=100,
                                height=200,
                                gravity=pb.Gravity(object=pb.ObjectGravity()),
                            )
                        )
                    ]
                )
            ],
        ),
        timeout=30,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ProcessImage(
            pb.ProcessImageRequest(source=pb.ImageSource(data=b"not an image")), timeout=30
        )
    after = scrape(service.metrics_port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    ok = dict(grpc_service="imagesvc.v1.ImageService", grpc_method="ProcessImage")
    assert delta("grpc_server_started_total", **ok) == 2
    assert delta("grpc_server_handled_total", grpc_code="OK", **ok) == 1
    assert delta("grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **ok) == 1
    assert delta("grpc_server_handling_seconds_count", **ok) == 2
    assert delta("imagesvc_pipeline_step_duration_seconds_count", op="resize") == 1
    assert delta("imagesvc_pipeline_step_duration_seconds_count", op="encode") == 1
    assert delta("imagesvc_inference_request_duration_seconds_count") >= 1
    assert delta("imagesvc_errors_total", reason="IMAGE_FORMAT_UNRECOGNIZED") == 1
    assert value(after, "imagesvc_triton_ready") == 1
    assert value(after, "imagesvc_workers") == 2


async def run_cli(*args: str) -> subprocess.CompletedProcess:
    # The server shares this event loop: run the client process without blocking it.
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "imagesvc.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_process_describe_health(service, tmp_path, channel):
    target = f"127.0.0.1:{service.port}"
    out = tmp_path / "face.webp"
    done = await run_cli(
        "--target",
        target,
        "process",
        "samples/astronaut.jpg",
        "-o",
        str(out),
        "--pipeline",
        "samples/face-crop.json",
    )
    assert done.returncode == 0, done.stderr
    assert "detection face" in done.stdout
    result = scenes.pyvips.Image.new_from_file(str(out))
    assert (result.width, result.height) == (256, 256)

    described = await run_cli("--target", target, "describe", "samples/astronaut.jpg", "--detect")
    assert described.returncode == 0, described.stderr
    assert '"className": "face"' in described.stdout

    assert (await run_cli("--target", target, "health")).returncode == 0
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"definitely not a jpeg")
    failed = await run_cli("--target", target, "process", str(junk), "-o", str(tmp_path / "x.jpg"))
    assert failed.returncode == 1
    assert "IMAGE_FORMAT_UNRECOGNIZED" in failed.stderr


def test_sample_pipelines_are_valid_proto_json():
    from google.protobuf import json_format

    for path in sorted((REPO / "samples").glob("*.json")):
        request = json_format.Parse(path.read_text(), pb.ProcessImageRequest())
        assert request.pipelines, path
