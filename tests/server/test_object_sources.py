"""object sources end to end: a real server over real gRPC reading from a real local
S3-compatible server (moto's, tests/s3_server.py), with the credentials from the environment."""

from __future__ import annotations

import contextlib

import grpc
import moto.settings
import pyvips
import pytest
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.rpc_helpers import rich_status
from tests.s3_server import (  # noqa: F401 - fixtures
    ACCESS_KEY,
    SECRET_KEY,
    admin_client,
    s3_env_fixture,
    s3_server_fixture,
)
from tests.server.conftest import server_settings
from tests.server.test_health_and_metrics import scrape, value

BUCKET = "imagesvc-rpc"
VERSIONED = "imagesvc-rpc-versioned"
MAX_SOURCE_BYTES = 60_000


def jpeg(width: int, height: int, colour=(30, 120, 200)) -> bytes:
    return (
        pyvips.Image.black(width, height, bands=3)
        .add(list(colour))
        .cast("uchar")
        .jpegsave_buffer(Q=90)
    )


def noise_png(width: int, height: int) -> bytes:
    return (pyvips.Image.gaussnoise(width, height, sigma=80) * 1).cast("uchar").pngsave_buffer()


def decode(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


def mean_rgb(data: bytes) -> tuple[float, ...]:
    image = decode(data)
    return tuple(image.extract_band(b).avg() for b in range(3))


RED = jpeg(64, 48, (220, 20, 20))
BLUE_V2 = jpeg(80, 40, (20, 20, 220))
GREEN_FALLBACK = jpeg(40, 30, (20, 220, 20))


@pytest.fixture(scope="module")
def store(s3_server, s3_env):
    client = admin_client(s3_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="photos/red.jpg", Body=RED)
    client.put_object(Bucket=BUCKET, Key="fallback.jpg", Body=GREEN_FALLBACK)
    big = noise_png(300, 300)
    assert len(big) > MAX_SOURCE_BYTES
    client.put_object(Bucket=BUCKET, Key="big.png", Body=big)
    client.create_bucket(Bucket=VERSIONED)
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    first = client.put_object(Bucket=VERSIONED, Key="photo.jpg", Body=RED)["VersionId"]
    client.put_object(Bucket=VERSIONED, Key="photo.jpg", Body=BLUE_V2)
    return client, first


@contextlib.asynccontextmanager
async def serving(s3_server, **overrides):
    # No Triton: nothing here detects.
    values = dict(
        s3_enabled=True,
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region="us-east-1",
        max_source_bytes=MAX_SOURCE_BYTES,
        ttl_s=600,
    )
    values.update(overrides)
    running = await app.start(server_settings("127.0.0.1:1", **values), CollectorRegistry())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.ImageServiceStub(channel), running
    finally:
        await running.stop(1.0)


@pytest.fixture(scope="module")
async def served(s3_server, s3_env, store):
    async with serving(s3_server) as (stub, running):
        yield stub, running
    assert running.object_fetcher is not None and running.object_fetcher._client is None


@pytest.fixture(scope="module")
def stub(served):
    return served[0]


def source(key: str, bucket: str = BUCKET, version_id: str = "") -> pb.ImageSource:
    return pb.ImageSource(object=pb.ObjectLocation(bucket=bucket, key=key, version_id=version_id))


def resize(src: pb.ImageSource, **fields) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=src,
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=32))])],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        **fields,
    )


async def failure(call) -> tuple[grpc.StatusCode, str, dict, list, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    reason, metadata, violations = rich_status(raised.value)
    return raised.value.code(), reason, metadata, violations, raised.value.details() or ""


async def test_object_source_is_processed(stub):
    response = await stub.ProcessImage(resize(source("photos/red.jpg")), timeout=30)
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_PNG, 32, 24)
    image = decode(response.data)
    assert (image.width, image.height) == (32, 24)
    r, g, b = mean_rgb(response.data)
    assert r > 180 and g < 60 and b < 60
    assert response.etag and response.cache_control == "max-age=600"


async def test_version_id_selects_an_older_version(stub, store):
    _, first = store
    current = await stub.ProcessImage(resize(source("photo.jpg", VERSIONED)), timeout=30)
    older = await stub.ProcessImage(resize(source("photo.jpg", VERSIONED, first)), timeout=30)
    assert (current.width, current.height) == (32, 16)  # 80x40, blue
    assert (older.width, older.height) == (32, 24)  # 64x48, red
    assert mean_rgb(current.data)[2] > 180 and mean_rgb(older.data)[0] > 180
    assert current.etag != older.etag


async def test_etag_revalidates_with_a_conditional_get(stub, served, s3_server, store):
    client, _ = store
    client.put_object(Bucket=BUCKET, Key="changing.jpg", Body=RED)
    request = resize(source("changing.jpg"))
    first = await stub.ProcessImage(request, timeout=30)
    assert first.etag and first.data

    # The same options with the etag: the store answers the conditional GET 304, no body.
    before = len(s3_server.gets(BUCKET, "changing.jpg"))
    request.if_none_match = first.etag
    again = await stub.ProcessImage(request, timeout=30)
    assert again.not_modified and not again.data and again.etag == first.etag
    served_now = s3_server.gets(BUCKET, "changing.jpg")[before:]
    assert [s.status for s in served_now] == [304]
    assert served_now[0].if_none_match is not None
    samples = scrape(served[1].metrics_port)
    assert value(samples, "imagesvc_not_modified_total", source="object") >= 1

    # Replaced: the conditional GET is answered in full, with a new etag.
    client.put_object(Bucket=BUCKET, Key="changing.jpg", Body=BLUE_V2)
    replaced = await stub.ProcessImage(request, timeout=30)
    assert not replaced.not_modified and replaced.etag != first.etag
    assert (decode(replaced.data).width, decode(replaced.data).height) == (32, 16)
    assert [s.status for s in s3_server.gets(BUCKET, "changing.jpg")[before + 1 :]] == [200]


async def test_object_source_is_described(stub):
    request = pb.DescribeImageRequest(source=source("photos/red.jpg"))
    response = await stub.DescribeImage(request, timeout=30)
    assert (response.format, response.width, response.height) == (pb.IMAGE_FORMAT_JPEG, 64, 48)
    assert response.size_bytes == len(RED)


async def test_object_as_fallback_image(stub):
    request = resize(source("missing.jpg"), fallback_image=source("fallback.jpg"))
    response = await stub.ProcessImage(request, timeout=30)
    assert response.fallback_used and response.fallback_reason == "SOURCE_NOT_FOUND"
    assert (response.width, response.height) == (32, 24)  # 40x30 resized
    assert mean_rgb(response.data)[1] > 180
    assert not response.etag


@pytest.mark.parametrize(
    ("src", "code", "reason"),
    [
        (source("missing.jpg"), grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND"),
        (source("a.jpg", "imagesvc-no-bucket"), grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND"),
        (
            source("photo.jpg", VERSIONED, "no-such-version"),
            grpc.StatusCode.NOT_FOUND,
            "SOURCE_NOT_FOUND",
        ),
        (source("big.png"), grpc.StatusCode.RESOURCE_EXHAUSTED, "SOURCE_TOO_LARGE"),
    ],
)
async def test_missing_and_too_large(stub, src, code, reason):
    got_code, got_reason, _, _, _ = await failure(stub.ProcessImage(resize(src), timeout=30))
    assert (got_code, got_reason) == (code, reason)


async def test_refused_credentials_are_permission_denied(stub, monkeypatch):
    # moto checks the signature and IAM from now on: our key is no IAM user's (403).
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    code, reason, metadata, _, details = await failure(
        stub.ProcessImage(resize(source("photos/red.jpg")), timeout=30)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SOURCE_FORBIDDEN")
    assert metadata["s3_error"] == "InvalidAccessKeyId"
    assert ACCESS_KEY not in details and SECRET_KEY not in details


async def test_invalid_location_is_a_field_violation_and_nothing_is_read(stub, s3_server):
    before = len(s3_server.served())
    request = resize(source("", "Not_A_Bucket", "bad version"))
    code, reason, _, violations, _ = await failure(stub.ProcessImage(request, timeout=30))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    fields = {field for field, _ in violations}
    assert {"source.object.bucket", "source.object.key", "source.object.version_id"} <= fields
    request = pb.DescribeImageRequest(source=source("a.jpg", "192.168.0.1"))
    code, _, _, violations, _ = await failure(stub.DescribeImage(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations] == ["source.object.bucket"]
    assert len(s3_server.served()) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"s3_enabled": False}, "IMAGESVC_S3_ENABLED"),
        ({"allowed_sources": f"s3://{BUCKET}/other/,https://images.example.com/"}, "ALLOWED"),
    ],
)
async def test_disabled_or_not_allowed_is_permission_denied(
    s3_server, s3_env, store, overrides, message
):
    before = len(s3_server.served())
    async with serving(s3_server, **overrides) as (stub, _):
        code, reason, _, _, details = await failure(
            stub.ProcessImage(resize(source("photos/red.jpg")), timeout=30)
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SOURCE_FORBIDDEN")
        assert message in details
    assert len(s3_server.served()) == before


async def test_allowed_prefix_lets_the_object_through(s3_server, s3_env, store):
    async with serving(s3_server, allowed_sources=f"s3://{BUCKET}/photos/") as (stub, _):
        response = await stub.ProcessImage(resize(source("photos/red.jpg")), timeout=30)
        assert (response.width, response.height) == (32, 24)


async def test_unreachable_store_is_unavailable(s3_env, store):
    class Nowhere:
        endpoint_url = "http://127.0.0.1:1"

    async with serving(Nowhere()) as (stub, _):
        code, reason, metadata, _, _ = await failure(
            stub.ProcessImage(resize(source("photos/red.jpg")), timeout=30)
        )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SOURCE_UNREACHABLE")
    assert metadata["cause"] == "connect_failed"
