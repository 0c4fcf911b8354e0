"""skip_processing and the fallback image over real gRPC: a real server, a real local origin."""

from __future__ import annotations

import asyncio

import grpc
import pyvips
import pytest
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings
from tests.server.test_health_and_metrics import scrape
from tests.sources.origin import Origin, not_found, sample_jpeg, static

JPEG = sample_jpeg(64, 48)
CORRUPT_JPEG = JPEG[:200]  # the header itself is cut short
# An origin address nothing listens on: the fetch is refused (SOURCE_UNREACHABLE).
UNREACHABLE = "http://127.0.0.1:1/photo.jpg"


def png(width: int, height: int, colour=(200, 40, 40)) -> bytes:
    return (
        pyvips.Image.black(width, height, bands=3).add(list(colour)).cast("uchar").pngsave_buffer()
    )


FALLBACK_PNG = png(40, 30, (10, 200, 10))


def request(source: pb.ImageSource, width: int = 20, **fields) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=source,
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=width))])],
        **fields,
    )


async def failure(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), rich_status(raised.value)[0]


@pytest.fixture(scope="module")
async def origin():
    server = Origin()
    await server.start()
    server.routes["/missing.jpg"] = not_found
    server.routes["/fallback.png"] = static(200, FALLBACK_PNG, {"Content-Type": "image/png"})
    yield server
    await server.close()


@pytest.fixture(scope="module")
def fallback_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fallback") / "fallback.png"
    path.write_bytes(FALLBACK_PNG)
    return path


async def _serve(**overrides):
    # No Triton: nothing here detects. Loopback is allowed for the local origin.
    settings = server_settings(
        "127.0.0.1:1", allow_loopback_source_addresses=True, ttl_s=600, **overrides
    )
    running = await app.start(settings, CollectorRegistry())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, channel


@pytest.fixture(scope="module")
async def served():
    """Fallback only per request (status 203 from the setting); skip for PNG by the setting;
    a small source pixel limit (0.05 MP)."""
    running, channel = await _serve(
        fallback_image_http_code=203, skip_processing_formats="png", max_src_resolution_mp=0.05
    )
    yield pb_grpc.ImageServiceStub(channel), running
    await channel.close()
    await running.stop(1.0)


@pytest.fixture(scope="module")
def stub(served):
    return served[0]


@pytest.fixture(scope="module")
async def with_fallback(fallback_file):
    """IMAGESVC_FALLBACK_IMAGE_PATH set, IMAGESVC_FALLBACK_IMAGE_HTTP_CODE=0 (the original)."""
    running, channel = await _serve(
        fallback_image_path=str(fallback_file), fallback_image_http_code=0
    )
    yield pb_grpc.ImageServiceStub(channel), running
    await channel.close()
    await running.stop(1.0)


# --- skip_processing ---------------------------------------------------------------------------


async def test_skip_returns_the_source_bytes_unprocessed(stub, served):
    response = await stub.ProcessImage(
        request(pb.ImageSource(data=JPEG), skip_processing_formats=[pb.IMAGE_FORMAT_JPEG]),
        timeout=30,
    )
    assert response.processing_skipped
    assert response.data == JPEG  # the promise is "unprocessed": byte for byte
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_JPEG, 64, 48)
    assert response.etag and response.cache_control == "max-age=600"
    assert not response.HasField("encoding")
    samples = await asyncio.to_thread(scrape, served[1].metrics_port)
    assert samples[("imagesvc_processing_skipped_total", (("format", "jpeg"),))] >= 1

    # The same output format asked for explicitly skips as well.
    same = await stub.ProcessImage(
        request(
            pb.ImageSource(data=JPEG),
            skip_processing_formats=[pb.IMAGE_FORMAT_JPEG],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG),
        ),
        timeout=30,
    )
    assert same.processing_skipped and same.data == JPEG


async def test_skip_from_the_setting_and_the_request_wins(stub):
    source = png(60, 40)
    by_setting = await stub.ProcessImage(request(pb.ImageSource(data=source)), timeout=30)
    assert by_setting.processing_skipped and by_setting.data == source
    # The request's list replaces the setting's: PNG is processed, resized to 20 px.
    by_request = await stub.ProcessImage(
        request(pb.ImageSource(data=source), skip_processing_formats=[pb.IMAGE_FORMAT_GIF]),
        timeout=30,
    )
    assert not by_request.processing_skipped and by_request.width == 20


async def test_no_skip_when_the_output_format_differs_or_the_format_is_not_listed(stub):
    other_output = await stub.ProcessImage(
        request(
            pb.ImageSource(data=JPEG),
            skip_processing_formats=[pb.IMAGE_FORMAT_JPEG],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        ),
        timeout=30,
    )
    assert not other_output.processing_skipped
    assert (other_output.format, other_output.width) == (pb.IMAGE_FORMAT_PNG, 20)
    not_listed = await stub.ProcessImage(
        request(pb.ImageSource(data=JPEG), skip_processing_formats=[pb.IMAGE_FORMAT_WEBP]),
        timeout=30,
    )
    assert not not_listed.processing_skipped and not_listed.width == 20
    assert not_listed.data != JPEG


async def test_skip_still_refuses_a_corrupt_source_and_applies_the_limits(stub):
    skip_jpeg = [pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_PNG]
    assert await failure(
        stub.ProcessImage(
            request(pb.ImageSource(data=CORRUPT_JPEG), skip_processing_formats=skip_jpeg),
            timeout=30,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_DECODE_FAILED")
    # 300 x 200 = 0.06 MP, over this server's 0.05 MP: refused as a processed request is.
    large = png(300, 200)
    for skip in (skip_jpeg, [pb.IMAGE_FORMAT_GIF]):
        assert await failure(
            stub.ProcessImage(
                request(pb.ImageSource(data=large), skip_processing_formats=skip), timeout=30
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE")


async def test_skip_of_a_url_source(stub, origin):
    origin.routes["/photo.jpg"] = static(200, JPEG, {"Content-Type": "image/jpeg"})
    response = await stub.ProcessImage(
        request(
            pb.ImageSource(url=origin.url("/photo.jpg")),
            skip_processing_formats=[pb.IMAGE_FORMAT_JPEG],
        ),
        timeout=30,
    )
    assert response.processing_skipped and response.data == JPEG


# --- fallback image ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "reason", "status"),
    [
        (pb.ImageSource(url=UNREACHABLE), "SOURCE_UNREACHABLE", 502),
        ("missing", "SOURCE_NOT_FOUND", 404),
        (pb.ImageSource(data=CORRUPT_JPEG), "IMAGE_DECODE_FAILED", 422),
        (pb.ImageSource(data=b"not an image at all" * 4), "IMAGE_FORMAT_UNRECOGNIZED", 422),
    ],
)
async def test_fallback_from_the_setting_with_the_original_status(
    with_fallback, origin, source, reason, status
):
    stub, running = with_fallback
    if source == "missing":
        source = pb.ImageSource(url=origin.url("/missing.jpg"))
    response = await stub.ProcessImage(
        request(source, output=pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP)), timeout=30
    )
    assert response.fallback_used and response.fallback_reason == reason
    assert response.fallback_status == status  # IMAGESVC_FALLBACK_IMAGE_HTTP_CODE=0
    # The fallback, through the same pipeline and output: 40x30 resized to 20 px wide, WebP.
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_WEBP, 20, 15)
    assert (response.etag, response.cache_control) == ("", "no-cache")
    samples = await asyncio.to_thread(scrape, running.metrics_port)
    assert samples[("imagesvc_fallback_used_total", (("reason", reason),))] >= 1


async def test_fallback_from_the_request_with_the_configured_status(stub, origin):
    for fallback in (
        pb.ImageSource(data=FALLBACK_PNG),
        pb.ImageSource(url=origin.url("/fallback.png")),
    ):
        response = await stub.ProcessImage(
            request(pb.ImageSource(url=UNREACHABLE), fallback_image=fallback), timeout=30
        )
        assert response.fallback_used and response.fallback_status == 203
        assert response.fallback_reason == "SOURCE_UNREACHABLE"
        assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_PNG, 20, 15)
        assert response.etag == ""


async def test_the_request_fallback_wins_over_the_setting(with_fallback):
    stub, _ = with_fallback
    other = png(80, 20)
    response = await stub.ProcessImage(
        request(pb.ImageSource(data=CORRUPT_JPEG), fallback_image=pb.ImageSource(data=other)),
        timeout=30,
    )
    assert response.fallback_used and (response.width, response.height) == (20, 5)


async def test_a_failing_fallback_gives_the_original_error(stub, origin):
    for fallback in (
        pb.ImageSource(data=CORRUPT_JPEG),
        pb.ImageSource(url=origin.url("/missing.jpg")),
    ):
        assert await failure(
            stub.ProcessImage(
                request(pb.ImageSource(url=UNREACHABLE), fallback_image=fallback), timeout=30
            )
        ) == (grpc.StatusCode.UNAVAILABLE, "SOURCE_UNREACHABLE")


async def test_no_fallback_for_a_bad_request_or_a_limit(with_fallback):
    stub, _ = with_fallback
    bad = pb.ProcessImageRequest(
        source=pb.ImageSource(data=CORRUPT_JPEG),
        pipelines=[pb.Pipeline(operations=[pb.Operation(blur=pb.Blur(sigma=-1))])],
    )
    code, reason = await failure(stub.ProcessImage(bad, timeout=30))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


async def test_without_any_fallback_the_error_stays(stub):
    assert await failure(
        stub.ProcessImage(request(pb.ImageSource(data=CORRUPT_JPEG)), timeout=30)
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_DECODE_FAILED")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), (b"not an image", "not a usable image"), (JPEG[:300], "usable")],
)
async def test_a_bad_fallback_file_fails_the_start_in_one_line(tmp_path, content, expected):
    path = tmp_path / "fallback.jpg"
    if content is not None:
        path.write_bytes(content)
    settings = server_settings("127.0.0.1:1", fallback_image_path=str(path))
    with pytest.raises(app.StartError) as raised:
        await app.start(settings, CollectorRegistry())
    message = str(raised.value)
    assert expected in message and "IMAGESVC_FALLBACK_IMAGE_PATH" in message
    assert "\n" not in message


# --- IMAGESVC_FALLBACK_IMAGE_URL ---------------------------------------------------------------


async def test_the_fallback_image_url_is_fetched_at_start_and_served(origin):
    running, channel = await _serve(fallback_image_url=origin.url("/fallback.png"))
    stub = pb_grpc.ImageServiceStub(channel)
    try:
        fetched_at_start = hits(origin, "/fallback.png")
        assert fetched_at_start >= 1
        for _ in range(2):
            response = await stub.ProcessImage(
                request(pb.ImageSource(url=origin.url("/missing.jpg"))), timeout=30
            )
            assert response.fallback_used and response.fallback_reason == "SOURCE_NOT_FOUND"
            image = pyvips.Image.new_from_buffer(response.data, "")
            assert (image.width, image.height) == (20, 15)
            assert image.getpoint(10, 7)[1] > 150  # the green fallback, not the source
        assert hits(origin, "/fallback.png") == fetched_at_start  # not fetched per request
    finally:
        await channel.close()
        await running.stop(0)


@pytest.mark.parametrize(
    ("path", "loopback", "expected"),
    [
        ("/missing.jpg", True, "SOURCE_NOT_FOUND"),
        ("/fallback.png", False, "SOURCE_FORBIDDEN"),  # the SSRF guard applies at start too
        ("/not-an-image.txt", True, "not a usable image"),
    ],
)
async def test_a_bad_fallback_url_fails_the_start_in_one_line(origin, path, loopback, expected):
    origin.routes["/not-an-image.txt"] = static(200, b"hello", {"Content-Type": "text/plain"})
    settings = server_settings(
        "127.0.0.1:1",
        fallback_image_url=origin.url(path),
        allow_loopback_source_addresses=loopback,
    )
    with pytest.raises(app.StartError) as raised:
        await app.start(settings, CollectorRegistry())
    message = str(raised.value)
    assert expected in message and "IMAGESVC_FALLBACK_IMAGE_URL" in message
    assert "\n" not in message


def hits(origin: Origin, path: str) -> int:
    return sum(1 for seen in origin.requests if seen.path == path)
