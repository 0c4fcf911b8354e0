"""A real imagesvc server on an ephemeral loopback port, wired to the real local Triton."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc


def server_settings(triton_url: str, **overrides) -> Settings:
    values = dict(
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        triton_url=triton_url,
        health_poll_s=0.5,
        workers=2,
        # Generous: a loaded CI machine must not turn a detection test into a degradation.
        triton_timeout_s=5.0,
    )
    values.update(overrides)
    return Settings(**values)


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 60.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="imagesvc.v1.ImageService")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await stub.Check(request, timeout=2)
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return
        if loop.time() > deadline:
            raise AssertionError("imagesvc.v1.ImageService never became SERVING")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
async def service(triton_sidecar):
    running = await app.start(server_settings(triton_sidecar.grpc_url), CollectorRegistry())
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="session")
async def channel(service):
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=options) as ch:
        await wait_serving(ch)
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.ImageServiceStub(channel)
