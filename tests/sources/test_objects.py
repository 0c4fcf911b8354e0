"""ObjectFetcher against a real local S3-compatible server (moto's, tests/s3_server.py): reads,
versions, conditional requests (304s counted on the server), sizes, errors, credentials,
timeouts, and the edge's validation of object locations."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import grpc
import moto.settings
import pytest

from imagesvc.errors import (
    DeadlineExceeded,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnreachable,
)
from imagesvc.options import SourceObject
from imagesvc.settings import Settings
from imagesvc.sources.objects import (
    ObjectFetcher,
    allowed,
    bucket_problem,
    key_problem,
    location_tag,
    version_id_problem,
)
from tests.s3_server import (  # noqa: F401 - fixtures
    ACCESS_KEY,
    SECRET_KEY,
    admin_client,
    s3_env_fixture,
    s3_server_fixture,
)
from tests.sources.origin import sample_jpeg

BUCKET = "imagesvc-unit"
VERSIONED = "imagesvc-unit-versioned"
JPEG = sample_jpeg(64, 48)
BIG = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture(scope="module")
def store(s3_server, s3_env):
    client = admin_client(s3_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="a.jpg", Body=JPEG)
    client.put_object(Bucket=BUCKET, Key="big.bin", Body=BIG)
    client.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    client.put_object(Bucket=BUCKET, Key="dir/ünïcode key.jpg", Body=JPEG)
    client.create_bucket(Bucket=VERSIONED)
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    first = client.put_object(Bucket=VERSIONED, Key="v.bin", Body=b"first version")
    second = client.put_object(Bucket=VERSIONED, Key="v.bin", Body=b"second version")
    return client, first["VersionId"], second["VersionId"]


@pytest.fixture
async def make_fetcher(s3_server, s3_env):
    made: list[ObjectFetcher] = []

    def make(**overrides) -> ObjectFetcher:
        values = dict(
            s3_enabled=True, s3_endpoint_url=s3_server.endpoint_url, s3_region="us-east-1"
        )
        values.update(overrides)
        fetcher = ObjectFetcher(Settings(**values))
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def obj(key: str, bucket: str = BUCKET, version_id: str = "") -> SourceObject:
    return SourceObject(bucket, key, version_id)


# --- reads ---------------------------------------------------------------------------------


async def test_reads_an_object_with_its_validators(store, make_fetcher):
    client = store[0]
    head = client.head_object(Bucket=BUCKET, Key="a.jpg")
    fetcher = make_fetcher()
    fetched = await fetcher.fetch_source(obj("a.jpg"), soon())
    assert fetched.data == JPEG and not fetched.not_modified
    tag = location_tag(obj("a.jpg"))
    assert fetched.etag == head["ETag"] + tag  # the store's strong ETag, tagged
    assert fetched.etag.startswith('"')
    assert fetched.last_modified is not None and fetched.last_modified.endswith("GMT" + tag)
    # One client per fetcher, reused.
    client_before = fetcher._client
    assert await fetcher.fetch(obj("dir/ünïcode key.jpg"), soon()) == JPEG
    assert fetcher._client is client_before


async def test_version_id_selects_a_version(store, make_fetcher):
    _, first, second = store
    fetcher = make_fetcher()
    assert await fetcher.fetch(obj("v.bin", VERSIONED), soon()) == b"second version"
    older = await fetcher.fetch_source(obj("v.bin", VERSIONED, first), soon())
    newer = await fetcher.fetch_source(obj("v.bin", VERSIONED, second), soon())
    assert older.data == b"first version" and newer.data == b"second version"
    # Two versions never share a validator, even for the same bytes.
    assert location_tag(obj("v.bin", VERSIONED, first)) != location_tag(
        obj("v.bin", VERSIONED, second)
    )
    assert older.etag != newer.etag


async def test_conditional_if_none_match_is_answered_304(s3_server, store, make_fetcher):
    fetcher = make_fetcher()
    source = obj("a.jpg")
    first = await fetcher.fetch_source(source, soon())
    before = len(s3_server.gets(BUCKET, "a.jpg"))
    again = await fetcher.fetch_source(source, soon(), {"If-None-Match": first.etag})
    assert again.not_modified and again.data is None
    served = s3_server.gets(BUCKET, "a.jpg")[before:]
    assert [(s.status, s.if_none_match) for s in served] == [(304, first.etag.split(";")[0])]


async def test_conditional_if_modified_since_is_answered_304(s3_server, store, make_fetcher):
    fetcher = make_fetcher()
    source = obj("a.jpg")
    first = await fetcher.fetch_source(source, soon())
    before = len(s3_server.gets(BUCKET, "a.jpg"))
    again = await fetcher.fetch_source(source, soon(), {"If-Modified-Since": first.last_modified})
    assert again.not_modified
    assert [s.status for s in s3_server.gets(BUCKET, "a.jpg")[before:]] == [304]


async def test_conditional_on_a_version(s3_server, store, make_fetcher):
    _, first, _ = store
    fetcher = make_fetcher()
    source = obj("v.bin", VERSIONED, first)
    fetched = await fetcher.fetch_source(source, soon())
    again = await fetcher.fetch_source(source, soon(), {"If-None-Match": fetched.etag})
    assert again.not_modified


async def test_a_validator_of_another_object_is_not_sent(s3_server, store, make_fetcher):
    """An etag made for another object (or version) asks nothing conditionally: full read."""
    _, first, second = store
    fetcher = make_fetcher()
    older = await fetcher.fetch_source(obj("v.bin", VERSIONED, first), soon())
    before = len(s3_server.gets(VERSIONED, "v.bin"))
    for conditional in (
        {"If-None-Match": older.etag},
        {"If-Modified-Since": older.last_modified},
        {"If-None-Match": '"foreign"'},
        {"If-Modified-Since": "not a date" + location_tag(obj("v.bin", VERSIONED, second))},
    ):
        fetched = await fetcher.fetch_source(obj("v.bin", VERSIONED, second), soon(), conditional)
        assert fetched.data == b"second version" and not fetched.not_modified
    served = s3_server.gets(VERSIONED, "v.bin")[before:]
    assert [(s.status, s.if_none_match, s.if_modified_since) for s in served] == [
        (200, None, None)
    ] * 4


async def test_a_changed_object_is_read_again(s3_server, store, make_fetcher):
    client = store[0]
    client.put_object(Bucket=BUCKET, Key="changing.bin", Body=b"before")
    fetcher = make_fetcher()
    source = obj("changing.bin")
    first = await fetcher.fetch_source(source, soon())
    client.put_object(Bucket=BUCKET, Key="changing.bin", Body=b"after!")
    again = await fetcher.fetch_source(source, soon(), {"If-None-Match": first.etag})
    assert again.data == b"after!" and not again.not_modified
    assert again.etag != first.etag


# --- sizes ---------------------------------------------------------------------------------


async def test_declared_size_over_the_limit_is_refused_before_reading(store, make_fetcher):
    with pytest.raises(SourceTooLarge) as raised:
        await make_fetcher(max_source_bytes=len(BIG) - 1).fetch(obj("big.bin"), soon())
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.metadata["declared_bytes"] == str(len(BIG))
    # At the limit exactly: read.
    assert await make_fetcher(max_source_bytes=len(BIG)).fetch(obj("big.bin"), soon()) == BIG


def test_streamed_size_over_the_limit_stops_reading():
    """A body without a declared length is cut off as soon as it passes the limit."""

    class Body(io.BytesIO):
        reads = 0

        def read(self, size=-1):
            Body.reads += 1
            return super().read(size)

    fetcher = ObjectFetcher(Settings(max_source_bytes=100_000))
    body = Body(b"x" * 1_000_000)
    with pytest.raises(SourceTooLarge):
        fetcher._read(body, None, soon(), threading.Event())
    assert Body.reads == 2  # 64 KiB, then 128 KiB > 100 000: stop


async def test_empty_object_is_unreachable(store, make_fetcher):
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher().fetch(obj("empty"), soon())
    assert raised.value.metadata["cause"] == "empty"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "s3_error"),
    [
        (obj("missing.jpg"), "NoSuchKey"),
        (obj("a.jpg", bucket="imagesvc-no-such-bucket"), "NoSuchBucket"),
        (obj("v.bin", VERSIONED, "no-such-version"), "NoSuchVersion"),
    ],
)
async def test_missing_objects(store, make_fetcher, source, s3_error):
    with pytest.raises(SourceNotFound) as raised:
        await make_fetcher().fetch(source, soon())
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.metadata["s3_error"] == s3_error


async def test_unknown_access_key_is_forbidden_without_leaking_it(store, make_fetcher, monkeypatch):
    # moto checks signatures and IAM once INITIAL_NO_AUTH_ACTION_COUNT is reached: our keys
    # are in no IAM user of its, so the store answers 403 InvalidAccessKeyId.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(SourceForbidden) as raised:
        await make_fetcher().fetch(obj("a.jpg"), soon())
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.metadata["s3_error"] == "InvalidAccessKeyId"
    text = f"{raised.value.message} {raised.value.metadata}"
    assert ACCESS_KEY not in text and SECRET_KEY not in text


async def test_no_credentials_is_forbidden(store, make_fetcher, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceForbidden) as raised:
        await make_fetcher().fetch(obj("a.jpg"), soon())
    assert raised.value.metadata["cause"] == "no_credentials"


async def test_disabled_and_not_allowed_are_refused_before_any_request(
    s3_server, store, make_fetcher
):
    before = len(s3_server.served())
    with pytest.raises(SourceForbidden, match="IMAGESVC_S3_ENABLED"):
        await make_fetcher(s3_enabled=False).fetch(obj("a.jpg"), soon())
    restricted = make_fetcher(allowed_sources="https://images.example.com/,s3://other-bucket/")
    with pytest.raises(SourceForbidden, match="IMAGESVC_ALLOWED_SOURCES"):
        await restricted.fetch(obj("a.jpg"), soon())
    assert len(s3_server.served()) == before
    allowed_one = make_fetcher(allowed_sources=f"s3://{BUCKET}/a.")
    assert await allowed_one.fetch(obj("a.jpg"), soon()) == JPEG


async def test_unreachable_store(store, make_fetcher):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher = make_fetcher(s3_endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(SourceUnreachable) as raised:
        await fetcher.fetch(obj("a.jpg"), soon())
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.metadata["cause"] == "connect_failed"
    assert raised.value.retry_after_s is not None


@pytest.fixture
async def silent_store():
    """A listener that accepts and never answers."""
    writers = []

    async def hold(reader, writer):
        writers.append(writer)
        await asyncio.sleep(60)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in writers:
        writer.close()
    server.close()


async def test_download_timeout_and_deadline(store, make_fetcher, silent_store):
    fetcher = make_fetcher(s3_endpoint_url=silent_store, source_download_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as raised:
        await fetcher.fetch(obj("a.jpg"), soon())
    assert raised.value.metadata["cause"] == "timeout"
    assert time.monotonic() - started < 3
    slow = make_fetcher(s3_endpoint_url=silent_store, source_download_timeout_s=30)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await slow.fetch(obj("a.jpg"), soon(0.4))
    assert time.monotonic() - started < 3
    with pytest.raises(DeadlineExceeded):
        await slow.fetch(obj("a.jpg"), time.monotonic() - 1)


async def test_close_drops_the_client(store, make_fetcher):
    fetcher = make_fetcher()
    await fetcher.fetch(obj("a.jpg"), soon())
    assert fetcher._client is not None
    await fetcher.close()
    assert fetcher._client is None
    assert await fetcher.fetch(obj("a.jpg"), soon()) == JPEG  # a new one, on demand


async def test_reads_run_on_threads_of_their_own(store, make_fetcher, monkeypatch):
    """Not on the event loop's default pool, which the edge hashes large sources on: a
    stalled store cannot take its threads."""
    fetcher = make_fetcher()
    names = []
    real = ObjectFetcher._get

    def recording(self, *args):
        names.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(ObjectFetcher, "_get", recording)
    await asyncio.gather(*(fetcher.fetch(obj("a.jpg"), soon()) for _ in range(4)))
    assert len(names) == 4 and all(name.startswith("object-source") for name in names)
    await fetcher.close()
    assert fetcher._executor is None


# --- validation at the edge ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abc", "my-bucket", "my.bucket.2", "a" * 63, "1bucket", "192.168.5.x"]
)
def test_valid_bucket_names(name):
    assert bucket_problem(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "ab", "a" * 64, "My-Bucket", "-bucket", "bucket-", "bu_cket", "a..b", "192.168.5.4"],
)
def test_invalid_bucket_names(name):
    assert bucket_problem(name) is not None


def test_keys_and_version_ids():
    assert key_problem("a") is None and key_problem("é" * 512) is None
    assert key_problem("") is not None
    assert key_problem("a\x00b") is not None
    assert key_problem("é" * 513) is not None  # 1026 bytes
    assert version_id_problem("") is None and version_id_problem("null") is None
    assert version_id_problem("x" * 1025) is not None
    assert version_id_problem("a b") is not None


def test_allowed_prefixes():
    source = obj("photos/a.jpg", "my-bucket")
    assert allowed(source, ())
    assert allowed(source, ("s3://my-bucket/",))
    assert allowed(source, ("S3://My-Bucket/photos/",))
    assert not allowed(source, ("s3://my-bucket/Photos/",))  # keys are case-sensitive
    assert not allowed(source, ("s3://my-bucket-2/",))
    assert not allowed(source, ("https://my-bucket/",))


@pytest.mark.parametrize(
    ("code", "status", "error", "retry"),
    [
        ("NoSuchKey", 404, SourceNotFound, False),
        ("AccessDenied", 403, SourceForbidden, False),
        ("SignatureDoesNotMatch", 403, SourceForbidden, False),
        ("ExpiredToken", 400, SourceForbidden, False),
        ("SlowDown", 503, SourceUnreachable, True),
        ("InternalError", 500, SourceUnreachable, True),
        ("InvalidArgument", 400, SourceUnreachable, False),
        ("", 502, SourceUnreachable, True),
    ],
)
def test_store_answers_map_to_domain_errors(code, status, error, retry):
    """What the store answers besides what moto can be made to (5xx, SlowDown, ...): the
    store's message, which may quote the access key, never reaches the caller."""
    from botocore.exceptions import ClientError

    from imagesvc.sources.objects import _client_error

    answer = {
        "Error": {"Code": code, "Message": f"key {ACCESS_KEY} said no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    mapped = _client_error(ClientError(answer, "GetObject"))
    assert type(mapped) is error
    assert (mapped.retry_after_s is not None) == retry
    assert ACCESS_KEY not in f"{mapped.message} {mapped.metadata}"
