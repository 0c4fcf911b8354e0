"""ETag derivation and expiry (imagesvc.caching), without a server."""

from __future__ import annotations

import time

import pytest
from google.protobuf import timestamp_pb2

from imagesvc import caching
from imagesvc.errors import Expired
from imagesvc.v1 import image_service_pb2 as pb

SOURCE = b"\xff\xd8\xff source bytes"


def request(**output) -> pb.ProcessImageRequest:
    resize = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=300, height=200, dpr=2.0)
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=SOURCE),
        pipelines=[
            pb.Pipeline(
                operations=[pb.Operation(resize=resize), pb.Operation(blur=pb.Blur(sigma=2))]
            )
        ],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP, quality=70, **output),
    )


def etag(msg: pb.ProcessImageRequest, data: bytes = SOURCE, buster: str = "", version="1"):
    identity = caching.digest_identity(data)
    return caching.make_etag(caching.canonical_options(msg), identity, buster, version)


def reversed_fields(msg) -> bytes:
    """``msg``'s own fields encoded one by one, last field first (a valid encoding that no
    protobuf library writes)."""
    out = b""
    for field, value in reversed(msg.ListFields()):
        single = type(msg)()
        if field.is_repeated:
            getattr(single, field.name).extend(value)
        elif field.message_type is not None:
            getattr(single, field.name).CopyFrom(value)
        else:
            setattr(single, field.name, value)
        out += single.SerializeToString()
    return out


def reordered(msg: pb.ProcessImageRequest) -> bytes:
    """The request with its fields and its output options' fields in reverse order."""
    output = reversed_fields(msg.output)
    assert len(output) < 128
    rest = pb.ProcessImageRequest()
    rest.CopyFrom(msg)
    rest.ClearField("output")
    return bytes([3 << 3 | 2, len(output)]) + output + reversed_fields(rest)


def test_etag_is_a_quoted_strong_tag():
    tag = etag(request())
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert len(tag) == caching.HASH_HEX + 2
    assert etag(request()) == tag  # deterministic


def test_same_options_in_another_order_or_representation_give_the_same_etag():
    msg = request()
    raw = reordered(msg)
    assert raw != msg.SerializeToString()
    parsed = pb.ProcessImageRequest.FromString(raw)
    assert parsed == msg
    assert etag(parsed) == etag(msg)
    # Source, if_none_match and expires are not processing options.
    other = pb.ProcessImageRequest()
    other.CopyFrom(msg)
    other.source.url = "http://example.com/a.jpg"
    other.if_none_match = '"abc"'
    other.expires.seconds = 4_000_000_000
    assert etag(other) == etag(msg)
    # Unknown fields (a newer client's) do not count either.
    with_unknown = pb.ProcessImageRequest.FromString(msg.SerializeToString() + b"\xf8\x07\x01")
    assert etag(with_unknown) == etag(msg)
    # Map entries in any order.
    a = pb.ObjectGravity(weights={"face": 2.0, "person": 1.5})
    b = pb.ObjectGravity()
    b.weights["person"] = 1.5
    b.weights["face"] = 2.0
    ra, rb = request(), request()
    ra.pipelines[0].operations[0].resize.gravity.object.CopyFrom(a)
    rb.pipelines[0].operations[0].resize.gravity.object.CopyFrom(b)
    assert etag(ra) == etag(rb)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m.output, "quality", 71),
        lambda m: setattr(m.output, "format", pb.IMAGE_FORMAT_AVIF),
        lambda m: setattr(m.output, "strip_metadata", False),
        lambda m: setattr(m.pipelines[0].operations[0].resize, "width", 301),
        lambda m: setattr(m.pipelines[0].operations[1].blur, "sigma", 2.5),
        lambda m: m.pipelines.add(),
        lambda m: m.pipelines[0].operations.reverse(),
    ],
)
def test_any_option_change_changes_the_etag(change):
    msg = request()
    change(msg)
    assert etag(msg) != etag(request())


def test_source_buster_and_version_changes_change_the_etag():
    base = etag(request())
    assert etag(request(), data=SOURCE + b"\x00") != base
    assert etag(request(), buster="2") != base
    assert etag(request(), version="2") != base


def test_origin_identity_prefers_a_strong_etag_then_last_modified_then_the_bytes():
    lm = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert caching.origin_identity('"v1"', lm, b"x") == caching.SourceIdentity("e", '"v1"')
    assert caching.origin_identity('W/"v1"', lm, b"x") == caching.SourceIdentity("m", lm)
    assert caching.origin_identity(None, None, b"x") == caching.digest_identity(b"x")
    # The origin's validator, not its bytes, identifies the source: same validator, same etag.
    options = caching.canonical_options(request())
    one = caching.make_etag(options, caching.origin_identity('"v1"', None, b"a"), "", "1")
    two = caching.make_etag(options, caching.origin_identity('"v1"', None, b"b"), "", "1")
    three = caching.make_etag(options, caching.origin_identity('"v2"', None, b"a"), "", "1")
    assert one == two != three


def test_an_origin_validator_travels_in_the_etag_and_only_there():
    options = caching.canonical_options(request())
    for identity in (caching.SourceIdentity("e", '"v1"'), caching.SourceIdentity("m", "Wed")):
        tag = caching.make_etag(options, identity, "", "1")
        assert caching.origin_validator(tag) == identity
    data_tag = caching.make_etag(options, caching.digest_identity(b"x"), "", "1")
    assert caching.origin_validator(data_tag) is None
    for junk in ("", "abc", '"x.!!"', '"x.Zm9v"', '"x.' + "A" * 5000 + '"', 'W/"x.ZSJ2MSI"'):
        assert caching.origin_validator(junk) is None


def test_expires_in_the_past_fails_and_the_ttl_is_capped():
    past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 10)
    with pytest.raises(Expired) as raised:
        caching.check_expires(past)
    assert raised.value.reason == "EXPIRED"
    future = timestamp_pb2.Timestamp(seconds=1_000_100)
    caching.check_expires(future, now=1_000_000)
    caching.check_expires(None)
    assert caching.cache_control(3600, None) == "max-age=3600"
    assert caching.cache_control(3600, future, now=1_000_000) == "max-age=100"
    assert caching.cache_control(60, future, now=1_000_000) == "max-age=60"
    assert caching.cache_control(0, None) == "no-cache"
