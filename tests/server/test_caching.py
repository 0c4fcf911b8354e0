"""ETag, if_none_match and expires over real gRPC: a real server, a real local origin, the
service's own metrics endpoint as the witness that nothing was decoded."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings
from tests.server.test_health_and_metrics import scrape
from tests.sources.origin import Origin, Request, respond, sample_jpeg, static

JPEG = sample_jpeg(64, 48)
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
STEPS = "imagesvc_pipeline_step_duration_seconds_count"


def conditional(etag: str | None = None, last_modified: str | None = None):
    """An origin resource with validators that answers 304 to a matching conditional GET."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        headers = {"Content-Type": "image/jpeg"}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = last_modified
        if (etag and request.headers.get("if-none-match") == etag) or (
            last_modified and request.headers.get("if-modified-since") == last_modified
        ):
            respond(writer, 304, b"", headers)
        else:
            respond(writer, 200, JPEG, headers)

    return handle


@pytest.fixture(scope="module")
async def origin():
    server = Origin()
    await server.start()
    server.routes["/etag.jpg"] = conditional(etag='"v1"')
    server.routes["/lm.jpg"] = conditional(last_modified=LAST_MODIFIED)
    server.routes["/plain.jpg"] = static(200, JPEG, {"Content-Type": "image/jpeg"})
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def served():
    # No Triton: nothing here detects. Loopback is allowed for the local origin.
    settings = server_settings(
        "127.0.0.1:1", allow_loopback_source_addresses=True, ttl_s=600, etag_buster="b1"
    )
    running = await app.start(settings, CollectorRegistry())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.ImageServiceStub(channel), running
    await running.stop(1.0)


@pytest.fixture(scope="module")
def stub(served):
    return served[0]


async def counters(served) -> tuple[float, float, float]:
    """(pipeline steps run other than fetches, not-modified answers, fetches) so far."""
    samples = await asyncio.to_thread(scrape, served[1].metrics_port)
    steps = sum(
        v
        for (n, labels), v in samples.items()
        if n == STEPS and ("op", "fetch_source") not in labels
    )
    fetches = sum(
        v for (n, labels), v in samples.items() if n == STEPS and ("op", "fetch_source") in labels
    )
    not_modified = sum(v for (n, _), v in samples.items() if n == "imagesvc_not_modified_total")
    return steps, not_modified, fetches


def request(source: pb.ImageSource, width: int = 32, **fields) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=source,
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=width))])],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        **fields,
    )


async def test_data_source_etag_and_not_modified_without_decoding(stub, served):
    first = await stub.ProcessImage(request(pb.ImageSource(data=JPEG)), timeout=30)
    assert first.etag.startswith('"') and first.etag.endswith('"') and "." not in first.etag
    assert first.data and not first.not_modified
    assert first.cache_control == "max-age=600"
    again = await stub.ProcessImage(request(pb.ImageSource(data=JPEG)), timeout=30)
    assert again.etag == first.etag

    steps, not_modified, _ = await counters(served)
    cached = await stub.ProcessImage(
        request(pb.ImageSource(data=JPEG), if_none_match=first.etag), timeout=30
    )
    assert cached.not_modified and cached.etag == first.etag
    assert cached.data == b"" and cached.width == cached.height == 0
    after_steps, after_not_modified, _ = await counters(served)
    assert after_steps == steps  # not even loaded: no pipeline step ran
    assert after_not_modified == not_modified + 1

    # Another etag, other options or other bytes: the full image.
    for changed in (
        request(pb.ImageSource(data=JPEG), if_none_match='"0123"'),
        request(pb.ImageSource(data=JPEG), width=31, if_none_match=first.etag),
        request(pb.ImageSource(data=sample_jpeg(64, 47)), if_none_match=first.etag),
    ):
        response = await stub.ProcessImage(changed, timeout=30)
        assert not response.not_modified and response.data
        assert response.etag != first.etag or changed.if_none_match != first.etag
    assert (await counters(served))[0] > after_steps


async def test_url_source_etag_comes_from_the_origin_and_is_revalidated_conditionally(
    stub, served, origin
):
    source = pb.ImageSource(url=origin.url("/etag.jpg"))
    first = await stub.ProcessImage(request(source), timeout=30)
    assert first.data and "." in first.etag  # carries the origin's validator

    steps, not_modified, _ = await counters(served)
    before = len(origin.requests)
    cached = await stub.ProcessImage(request(source, if_none_match=first.etag), timeout=30)
    assert cached.not_modified and cached.etag == first.etag and cached.data == b""
    sent = origin.requests[before:]
    assert [r.headers.get("if-none-match") for r in sent] == ['"v1"']  # the origin said 304
    after_steps, after_not_modified, _ = await counters(served)
    assert (after_steps, after_not_modified) == (steps, not_modified + 1)

    # The origin's resource changes: its 200 with a new ETag gets the full image.
    origin.routes["/etag.jpg"] = conditional(etag='"v2"')
    try:
        changed = await stub.ProcessImage(request(source, if_none_match=first.etag), timeout=30)
    finally:
        origin.routes["/etag.jpg"] = conditional(etag='"v1"')
    assert not changed.not_modified and changed.data and changed.etag != first.etag


async def test_url_source_last_modified_is_the_identity_without_an_etag(stub, origin):
    source = pb.ImageSource(url=origin.url("/lm.jpg"))
    first = await stub.ProcessImage(request(source), timeout=30)
    before = len(origin.requests)
    cached = await stub.ProcessImage(request(source, if_none_match=first.etag), timeout=30)
    assert cached.not_modified
    assert origin.requests[before].headers.get("if-modified-since") == LAST_MODIFIED


async def test_url_source_without_validators_is_compared_by_its_bytes_before_decoding(
    stub, served, origin
):
    source = pb.ImageSource(url=origin.url("/plain.jpg"))
    first = await stub.ProcessImage(request(source), timeout=30)
    data_etag = (await stub.ProcessImage(request(pb.ImageSource(data=JPEG)), timeout=30)).etag
    assert first.etag == data_etag  # identified by the same bytes
    steps, _, fetches = await counters(served)
    cached = await stub.ProcessImage(request(source, if_none_match=first.etag), timeout=30)
    assert cached.not_modified
    after_steps, _, after_fetches = await counters(served)
    assert after_steps == steps and after_fetches == fetches + 1  # fetched, not decoded


@pytest.mark.parametrize("rpc", ["ProcessImage", "DescribeImage"])
async def test_expired_request_fails_before_the_source_is_fetched(stub, origin, rpc):
    past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 1)
    source = pb.ImageSource(url=origin.url("/plain.jpg"))
    if rpc == "ProcessImage":
        message = request(source, expires=past)
    else:
        message = pb.DescribeImageRequest(source=source, expires=past)
    before = len(origin.requests)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub, rpc)(message, timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(raised.value)[0] == "EXPIRED"
    assert len(origin.requests) == before


async def test_expires_in_the_future_caps_the_cache_hint(stub):
    soon = timestamp_pb2.Timestamp(seconds=int(time.time()) + 120)
    response = await stub.ProcessImage(request(pb.ImageSource(data=JPEG), expires=soon), timeout=30)
    max_age = int(response.cache_control.removeprefix("max-age="))
    assert 100 <= max_age <= 120


async def test_a_degraded_result_gets_no_etag(stub):
    # Object gravity with Triton unreachable: smart crop instead, reported as a degradation.
    resize = pb.Resize(
        type=pb.RESIZING_TYPE_FILL,
        width=32,
        height=32,
        gravity=pb.Gravity(object=pb.ObjectGravity(classes=["face"])),
    )
    message = pb.ProcessImageRequest(
        source=pb.ImageSource(data=JPEG),
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=resize)])],
    )
    response = await stub.ProcessImage(message, timeout=30)
    assert response.degradations and response.data
    assert (response.etag, response.cache_control) == ("", "no-cache")


async def test_an_etag_of_one_url_never_revalidates_another(stub, origin):
    """Two origins may hand out the same validator (here the same Last-Modified): the etag of
    one URL's result, sent with another URL, is not that URL's etag, so no conditional request
    goes out and the other image comes back whole."""
    origin.routes["/lm-other.jpg"] = origin.routes["/lm.jpg"]
    first = await stub.ProcessImage(request(pb.ImageSource(url=origin.url("/lm.jpg"))), timeout=30)
    before = len(origin.requests)
    other = await stub.ProcessImage(
        request(pb.ImageSource(url=origin.url("/lm-other.jpg")), if_none_match=first.etag),
        timeout=30,
    )
    assert not other.not_modified and other.data
    assert other.etag != first.etag
    assert "if-modified-since" not in origin.requests[before].headers
