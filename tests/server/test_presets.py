"""Presets and the response's freshness hints over real gRPC, on a real server."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.images import decode, jpeg, textured
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings

SOURCE = jpeg(textured(160, 120))

PRESETS = """
default:
  output: {format: IMAGE_FORMAT_WEBP}
thumbnail:
  pipelines:
    - operations: [{resize: {width: 40, height: 40, type: RESIZING_TYPE_FILL}}]
png:
  output: {format: IMAGE_FORMAT_PNG}
"""


def thumbnail_ops() -> list[pb.Operation]:
    return [pb.Operation(resize=pb.Resize(width=40, height=40, type=pb.RESIZING_TYPE_FILL))]


async def _serve(tmp_path, text: str = PRESETS, **overrides):
    path = tmp_path / "presets.yaml"
    path.write_text(text)
    # No Triton: nothing here detects.
    settings = server_settings("127.0.0.1:1", presets_path=str(path), ttl_s=600, **overrides)
    running = await app.start(settings, CollectorRegistry())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, channel


@pytest.fixture
async def stub(tmp_path):
    running, channel = await _serve(tmp_path)
    yield pb_grpc.ImageServiceStub(channel)
    await channel.close()
    await running.stop(0)


async def test_default_and_named_presets_shape_the_result(stub):
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail"])
    )
    assert response.format == pb.IMAGE_FORMAT_WEBP  # the default preset's
    image = decode(response.data)
    assert (image.width, image.height) == (40, 40)
    assert image.get("vips-loader").startswith("webp")

    # The request's own output beats the default; a later preset beats an earlier one.
    own = pb.ProcessImageRequest(
        source=pb.ImageSource(data=SOURCE),
        presets=["thumbnail"],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG),
    )
    assert (await stub.ProcessImage(own)).format == pb.IMAGE_FORMAT_JPEG
    later = pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["png"])
    response = await stub.ProcessImage(later)
    assert response.format == pb.IMAGE_FORMAT_PNG
    assert (response.width, response.height) == (160, 120)  # no pipelines: unresized


async def test_the_etag_is_that_of_the_merged_options(stub):
    named = pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail"])
    spelled_out = pb.ProcessImageRequest(
        source=pb.ImageSource(data=SOURCE),
        pipelines=[pb.Pipeline(operations=thumbnail_ops())],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP),
    )
    first = await stub.ProcessImage(named)
    assert first.etag and first.etag == (await stub.ProcessImage(spelled_out)).etag
    other = await stub.ProcessImage(
        pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["png"])
    )
    assert other.etag != first.etag
    named.if_none_match = first.etag
    assert (await stub.ProcessImage(named)).not_modified


async def test_unknown_presets_are_invalid_arguments(stub):
    request = pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail", "x"])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ProcessImage(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, _, violations = rich_status(raised.value)
    assert reason == "INVALID_REQUEST"
    assert [field for field, _ in violations] == ["presets[1]"]


async def test_responses_say_when_they_stop_being_fresh(stub):
    before = time.time()
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail"])
    )
    assert response.cache_control == "max-age=600"
    assert before + 598 <= response.expires.seconds <= time.time() + 601
    # The request's own expiry caps both.
    capped = pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail"])
    capped.expires.FromSeconds(int(time.time()) + 60)
    response = await stub.ProcessImage(capped)
    max_age = int(response.cache_control.removeprefix("max-age="))
    assert 55 <= max_age <= 60
    assert abs(response.expires.seconds - capped.expires.seconds) <= 1


async def test_only_presets_mode(tmp_path):
    running, channel = await _serve(tmp_path, only_presets=True)
    stub = pb_grpc.ImageServiceStub(channel)
    try:
        response = await stub.ProcessImage(
            pb.ProcessImageRequest(source=pb.ImageSource(data=SOURCE), presets=["thumbnail"])
        )
        assert (response.width, response.height) == (40, 40)
        own = pb.ProcessImageRequest(
            source=pb.ImageSource(data=SOURCE),
            pipelines=[pb.Pipeline(operations=thumbnail_ops())],
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ProcessImage(own)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in rich_status(raised.value)[2]] == ["pipelines"]
    finally:
        await channel.close()
        await running.stop(0)


async def test_invalid_presets_fail_the_start(tmp_path):
    with pytest.raises(app.StartError, match="preset 'blurry' is invalid"):
        await _serve(tmp_path, "blurry: {pipelines: [{operations: [{blur: {sigma: 0}}]}]}")
    with pytest.raises(app.StartError, match="IMAGESVC_PRESETS_PATH"):
        await _serve(tmp_path, "- not a mapping")
