"""Metrics and logs say what the caller saw: a request whose deadline passed while it waited is
counted as DEADLINE_EXCEEDED (not CANCELLED), a real cancel as CANCELLED, and an INTERNAL error
from libvips is logged at error level with its traceback. Real server, real scrapes.

The server has one worker and a hung Triton (a gRPC server that accepts every call and never
answers), so a detection request holds the worker for IMAGESVC_TRITON_TIMEOUT_S while the requests
under test wait in the queue.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from imagesvc.ops import blur
from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.rpc_helpers import rich_status
from tests.server import scenes
from tests.server.conftest import server_settings
from tests.server.test_health_and_metrics import idle_scrape, scrape, value

HOLD_S = 6.0  # how long a detection request holds the only worker (the Triton timeout)
METHOD = dict(grpc_service="imagesvc.v1.ImageService", grpc_method="ProcessImage")


class Hang(grpc.GenericRpcHandler):
    """Every method, Triton's included, waits forever."""

    def service(self, handler_call_details):
        async def hang(request, context):
            await asyncio.sleep(3600)

        return grpc.unary_unary_rpc_method_handler(hang)


@pytest.fixture(scope="module")
async def hung_triton():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Hang()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def one_worker_server(hung_triton):
    running = await app.start(
        server_settings(
            hung_triton,
            workers=1,
            triton_timeout_s=HOLD_S,
            triton_retry_after_s=0,  # no circuit breaker: every request waits on Triton
            health_poll_s=3600,
        ),
        CollectorRegistry(),
    )
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
async def one_worker_stub(one_worker_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{one_worker_server.port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        yield pb_grpc.ImageServiceStub(channel)


def source() -> bytes:
    return scenes.astronaut().jpegsave_buffer()


def blur_request() -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=source()),
        pipelines=[pb.Pipeline(operations=[pb.Operation(blur=pb.Blur(sigma=2))])],
    )


def detection_request() -> pb.ProcessImageRequest:
    skip = pb.DETECTION_UNAVAILABLE_POLICY_SKIP
    op = pb.Operation(blur_detections=pb.BlurDetections(sigma=5, on_detection_unavailable=skip))
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=source()), pipelines=[pb.Pipeline(operations=[op])]
    )


async def wait_for_metric(
    port: int, name: str, expected: float, timeout: float = 10.0, **labels
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while value(await asyncio.to_thread(scrape, port), name, **labels) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"{name} never reached {expected}")
        await asyncio.sleep(0.05)


async def test_deadline_passed_and_cancelled_are_told_apart(one_worker_server, one_worker_stub):
    port = one_worker_server.metrics_port
    before = await idle_scrape(port)
    holder = one_worker_stub.ProcessImage(detection_request(), timeout=60)  # starts at once
    await wait_for_metric(port, "imagesvc_images_in_progress", 1)

    # Waits in the queue behind the holder until its deadline passes.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one_worker_stub.ProcessImage(blur_request(), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server sees it end too (the client may learn first): then the queue is empty again.
    late = value(before, "grpc_server_handled_total", grpc_code="DEADLINE_EXCEEDED", **METHOD)
    await wait_for_metric(
        port, "grpc_server_handled_total", late + 1, grpc_code="DEADLINE_EXCEEDED", **METHOD
    )
    await wait_for_metric(port, "imagesvc_queue_depth", 0)

    # Waits in the queue with plenty of time left, and the caller gives up.
    call = one_worker_stub.ProcessImage(blur_request(), timeout=60)
    await wait_for_metric(port, "imagesvc_queue_depth", 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    held = await holder
    assert [d.operation for d in held.degradations] == ["blur_detections"]
    assert "TRITON_TIMEOUT" in held.degradations[0].message
    after = await idle_scrape(port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "grpc_server_handled_total"
    assert delta(handled, grpc_code="DEADLINE_EXCEEDED", **METHOD) == 1
    assert delta(handled, grpc_code="CANCELLED", **METHOD) == 1
    assert delta(handled, grpc_code="OK", **METHOD) == 1
    assert delta("imagesvc_errors_total", reason="DEADLINE_EXCEEDED") == 1
    assert delta("imagesvc_errors_total", reason="CANCELLED") == 1


async def test_internal_error_is_logged_with_its_traceback(
    one_worker_server, one_worker_stub, monkeypatch
):
    def broken_gaussian(image, sigma):
        # A real libvips failure: an area outside the image.
        return image.extract_area(0, 0, image.width + 1, image.height)

    monkeypatch.setattr(blur, "gaussian", broken_gaussian)
    port = one_worker_server.metrics_port
    before = await idle_scrape(port)
    with capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await one_worker_stub.ProcessImage(blur_request(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert rich_status(caught.value)[0] == "PROCESSING_FAILED"

    [entry] = [e for e in logs if e.get("method") == "ProcessImage"]
    assert entry["event"] == "rpc_failed"
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is True  # rendered as the traceback (format_exc_info)
    assert entry["reason"] == "PROCESSING_FAILED"
    assert "bad extract area" in entry["message"]

    after = scrape(port)
    assert (
        value(after, "grpc_server_handled_total", grpc_code="INTERNAL", **METHOD)
        - value(before, "grpc_server_handled_total", grpc_code="INTERNAL", **METHOD)
        == 1
    )


async def test_rejections_stay_at_info(one_worker_stub):
    with capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await one_worker_stub.ProcessImage(
                pb.ProcessImageRequest(source=pb.ImageSource(data=b"not an image")), timeout=30
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [entry] = [e for e in logs if e.get("method") == "ProcessImage"]
    assert (entry["event"], entry["log_level"]) == ("rpc_rejected", "info")
    assert "exc_info" not in entry
