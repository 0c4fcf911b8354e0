"""url sources end to end: a real server over real gRPC fetching from a real local origin."""

from __future__ import annotations

import gzip

import grpc
import pytest
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings
from tests.sources.origin import Origin, sample_jpeg, static

JPEG = sample_jpeg(64, 48)


@pytest.fixture(scope="module")
async def origin():
    server = Origin()
    await server.start()
    server.routes["/a.jpg"] = static(200, JPEG, {"Content-Type": "image/jpeg"})
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def url_stub():
    # No Triton needed: nothing here detects. The origin is on loopback, so loopback is allowed;
    # everything else the guard refuses stays refused.
    settings = server_settings("127.0.0.1:1", allow_loopback_source_addresses=True)
    running = await app.start(settings, CollectorRegistry())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.ImageServiceStub(channel)
    await running.stop(1.0)
    assert running.fetcher is not None and running.fetcher._session is None  # pool closed


def resize(url: str) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(url=url),
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=32))])],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
    )


async def test_url_source_is_processed(origin, url_stub):
    response = await url_stub.ProcessImage(resize(origin.url("/a.jpg")), timeout=30)
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_PNG, 32, 24)


async def test_url_source_is_described(origin, url_stub):
    request = pb.DescribeImageRequest(source=pb.ImageSource(url=origin.url("/a.jpg")))
    response = await url_stub.DescribeImage(request, timeout=30)
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_JPEG, 64, 48)
    assert response.size_bytes == len(JPEG)


@pytest.mark.parametrize(
    ("url", "code", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "PERMISSION_DENIED", "SOURCE_FORBIDDEN"),
        ("http://[::ffff:10.0.0.1]/a.jpg", "PERMISSION_DENIED", "SOURCE_FORBIDDEN"),
        ("{origin}/missing.jpg", "NOT_FOUND", "SOURCE_NOT_FOUND"),
    ],
)
async def test_refused_and_missing_sources(origin, url_stub, url, code, reason):
    request = resize(url.format(origin=origin.url("").rstrip("/")))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await url_stub.ProcessImage(request, timeout=30)
    assert raised.value.code() == getattr(grpc.StatusCode, code)
    got_reason, metadata, _ = rich_status(raised.value)
    assert got_reason == reason
    assert "169.254" not in (raised.value.details() or "")
    assert "10.0.0.1" not in (raised.value.details() or "")


async def test_malformed_url_is_a_field_violation_and_nothing_is_fetched(origin, url_stub):
    before = len(origin.requests)
    request = resize("ftp://example.com/a.jpg")
    request.pipelines[0].operations[0].resize.width = 0
    request.pipelines[0].operations[0].resize.dpr = -1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await url_stub.ProcessImage(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, _, violations = rich_status(raised.value)
    assert reason == "INVALID_REQUEST"
    assert ("source.url", "only http and https URLs can be fetched") in violations
    assert len(origin.requests) == before


async def test_invalid_pipeline_fails_before_the_fetch(origin, url_stub):
    before = len(origin.requests)
    request = resize(origin.url("/a.jpg"))
    request.pipelines[0].operations[0].resize.dpr = -1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await url_stub.ProcessImage(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(origin.requests) == before


@pytest.fixture(scope="module")
async def guarded_stub():
    """The default guard: loopback, private and link-local addresses all refused."""
    running = await app.start(server_settings("127.0.0.1:1"), CollectorRegistry())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.ImageServiceStub(channel)
    await running.stop(1.0)


# Spellings of the loopback origin's address (the guard sees what they resolve to), and other
# refused addresses; {port} is the listening origin's.
REFUSED_OVER_GRPC = [
    "http://127.0.0.1:{port}/a.jpg",
    "http://127.1:{port}/a.jpg",
    "http://2130706433:{port}/a.jpg",
    "http://0x7f000001:{port}/a.jpg",
    "http://0177.0.0.1:{port}/a.jpg",
    "http://127.000.000.001:{port}/a.jpg",
    "http://localhost:{port}/a.jpg",
    "http://0.0.0.0:{port}/a.jpg",
    "http://0:{port}/a.jpg",
    "http://[::1]:{port}/a.jpg",
    "http://[::]:{port}/a.jpg",
    "http://[::ffff:127.0.0.1]:{port}/a.jpg",
    "http://[::ffff:7f00:1]:{port}/a.jpg",
    "https://127.0.0.1:{port}/a.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://[fe80::1]/",
]


@pytest.mark.parametrize("template", REFUSED_OVER_GRPC)
async def test_ssrf_refusals_over_grpc_reach_no_listener(origin, guarded_stub, template):
    accepted = origin.accepted
    url = template.format(port=origin.port)
    for call in (
        guarded_stub.ProcessImage(resize(url), timeout=30),
        guarded_stub.DescribeImage(
            pb.DescribeImageRequest(source=pb.ImageSource(url=url)), timeout=30
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reason, metadata, _ = rich_status(raised.value)
        assert reason == "SOURCE_FORBIDDEN"
        assert metadata["cause"] == "address_refused"
        shown = (raised.value.details() or "") + repr(metadata)
        for revealing in ("127.0", "::1", "169.254", "10.0", "192.168", "fe80", "fd00"):
            assert revealing not in shown
    assert origin.accepted == accepted  # not one connection reached the loopback origin


async def test_a_gzip_bomb_source_is_not_inflated(origin, url_stub):
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    origin.routes["/bomb.jpg"] = static(
        200, bomb, {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await url_stub.ProcessImage(resize(origin.url("/bomb.jpg")), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(raised.value)[0] == "IMAGE_FORMAT_UNRECOGNIZED"
