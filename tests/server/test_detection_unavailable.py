"""Anonymisation with Triton unreachable, over real gRPC: blur_detections and pixelate_detections
fail closed by default (UNAVAILABLE, DETECTION_UNAVAILABLE, RetryInfo), or obscure the whole image
or skip when the caller asks, and say so.

The server points at a loopback port where nothing listens (a socket bound but not listening, so
every connection is refused at once), as when the sidecar is down.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.images import decode, to_array
from tests.rpc_helpers import rich_status
from tests.server import scenes
from tests.server.conftest import server_settings
from tests.server.test_health_and_metrics import idle_scrape, scrape, value

RETRY_AFTER_S = 7.5
OPS = ["blur_detections", "pixelate_detections"]
FAIL = pb.DETECTION_UNAVAILABLE_POLICY_FAIL
OBSCURE = pb.DETECTION_UNAVAILABLE_POLICY_OBSCURE_WHOLE_IMAGE
SKIP = pb.DETECTION_UNAVAILABLE_POLICY_SKIP
# Where BlazeFace finds the astronaut's face (scenes.FACE_BOX), shrunk to be well inside it.
FACE = np.s_[90:160, 190:255]


@pytest.fixture(scope="module")
async def dead_triton_server():
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = dead.getsockname()[1]
    running = await app.start(
        server_settings(
            f"127.0.0.1:{port}", triton_timeout_s=0.5, triton_retry_after_s=RETRY_AFTER_S
        ),
        CollectorRegistry(),
    )
    try:
        yield running
    finally:
        await running.stop(1.0)
        dead.close()


@pytest.fixture(scope="module")
async def dead_triton_stub(dead_triton_server):
    # ImageService never turns SERVING without Triton; the server answers all the same.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dead_triton_server.port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        yield pb_grpc.ImageServiceStub(channel)


def source_png() -> bytes:
    return scenes.astronaut().pngsave_buffer()


def anonymise(op: str, policy: int | None = None) -> pb.ProcessImageRequest:
    fields = {} if policy is None else {"on_detection_unavailable": policy}
    if op == "blur_detections":
        operation = pb.Operation(blur_detections=pb.BlurDetections(sigma=8, **fields))
    else:
        operation = pb.Operation(pixelate_detections=pb.PixelateDetections(size=12, **fields))
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=source_png()),
        pipelines=[pb.Pipeline(operations=[operation])],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),  # lossless: pixels compare exactly
    )


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


def detail(array: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: high for sharp texture."""
    return float(np.abs(np.diff(array.astype(int), axis=1)).mean())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("policy", [None, FAIL], ids=["default", "FAIL"])
async def test_fails_closed_with_retry_info(dead_triton_stub, dead_triton_server, op, policy):
    before = await idle_scrape(dead_triton_server.metrics_port)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await dead_triton_stub.ProcessImage(anonymise(op, policy), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    reason, metadata, _ = rich_status(error)
    assert reason == "DETECTION_UNAVAILABLE"
    assert metadata["operation"] == op
    assert metadata["detection_failure"] in ("TRITON_UNAVAILABLE", "TRITON_CIRCUIT_OPEN")
    info = retry_info(error)
    assert info is not None
    assert info.retry_delay.ToMilliseconds() == RETRY_AFTER_S * 1000

    after = scrape(dead_triton_server.metrics_port)
    method = dict(grpc_service="imagesvc.v1.ImageService", grpc_method="ProcessImage")
    handled = "grpc_server_handled_total"
    assert (
        value(after, handled, grpc_code="UNAVAILABLE", **method)
        - value(before, handled, grpc_code="UNAVAILABLE", **method)
        == 1
    )
    errors = "imagesvc_errors_total"
    assert (
        value(after, errors, reason="DETECTION_UNAVAILABLE")
        - value(before, errors, reason="DETECTION_UNAVAILABLE")
        == 1
    )


@pytest.mark.parametrize("op", OPS)
async def test_obscures_the_whole_image_when_asked(dead_triton_stub, dead_triton_server, op):
    before = await idle_scrape(dead_triton_server.metrics_port)
    response = await dead_triton_stub.ProcessImage(anonymise(op, OBSCURE), timeout=30)
    assert not response.detections
    [degradation] = response.degradations
    assert (degradation.reason, degradation.operation) == ("DETECTION_UNAVAILABLE", op)
    done = "blurred" if op == "blur_detections" else "pixelated"
    assert f"whole image was {done}" in degradation.message

    source = to_array(scenes.astronaut())
    out = to_array(decode(response.data))
    assert out.shape == source.shape
    for region in (FACE, np.s_[:, :], np.s_[300:500, 0:200]):  # the face and everything else
        assert detail(out[region]) < 0.6 * detail(source[region]), region

    after = scrape(dead_triton_server.metrics_port)
    name = "imagesvc_degradations_total"
    labels = dict(reason="DETECTION_UNAVAILABLE", op=op)
    assert value(after, name, **labels) - value(before, name, **labels) == 1


@pytest.mark.parametrize("op", OPS)
async def test_skips_with_a_degradation_when_asked(dead_triton_stub, op):
    response = await dead_triton_stub.ProcessImage(anonymise(op, SKIP), timeout=30)
    [degradation] = response.degradations
    assert (degradation.reason, degradation.operation) == ("DETECTION_UNAVAILABLE", op)
    assert "skipped" in degradation.message
    # As asked: the face is returned as it was.
    assert np.array_equal(to_array(decode(response.data)), to_array(scenes.astronaut()))


async def test_object_gravity_still_falls_back_to_smart(dead_triton_stub):
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    request = pb.ProcessImageRequest(
        source=pb.ImageSource(data=source_png()),
        pipelines=[
            pb.Pipeline(
                operations=[
                    pb.Operation(
                        resize=pb.Resize(
                            type=pb.RESIZING_TYPE_FILL, width=128, height=256, gravity=gravity
                        )
                    )
                ]
            )
        ],
    )
    response = await dead_triton_stub.ProcessImage(request, timeout=30)
    assert (response.width, response.height) == (128, 256)
    [degradation] = response.degradations
    assert (degradation.reason, degradation.operation) == ("DETECTION_UNAVAILABLE", "resize")
    assert "smart crop" in degradation.message


async def test_ml_autoquality_searches_by_dssim_and_says_why(dead_triton_stub, dead_triton_server):
    # The ML method promises a quality, not a model: with Triton down the RPC succeeds, the
    # quality searched by DSSIM, the degradation in the response and in the metric.
    before = await idle_scrape(dead_triton_server.metrics_port)
    aq = pb.Autoquality(
        method=pb.AUTOQUALITY_METHOD_ML, target=0.012, min_quality=30, max_quality=95
    )
    response = await dead_triton_stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=scenes.astronaut().jpegsave_buffer(Q=95)),
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=300))])],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, autoquality=aq),
        ),
        timeout=30,
    )
    report = response.encoding
    assert report.method == pb.AUTOQUALITY_METHOD_DSSIM and report.model_version == ""
    assert report.target_met and report.achieved_dssim <= 0.012 + 0.001
    [degradation] = response.degradations
    assert degradation.reason == "AUTOQUALITY_ML_UNAVAILABLE"
    assert "TRITON_" in degradation.message
    assert decode(response.data).width == 300
    after = scrape(dead_triton_server.metrics_port)
    name = "imagesvc_degradations_total"
    labels = dict(reason="AUTOQUALITY_ML_UNAVAILABLE", op="")
    assert value(after, name, **labels) - value(before, name, **labels) == 1
