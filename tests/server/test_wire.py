"""Request decoding with the source bytes lifted out: always the same request as protobuf's own
parse, a view into the received buffer when the shape allows it, MALFORMED_REQUEST otherwise."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from imagesvc.errors import MalformedRequest
from imagesvc.server import wire
from imagesvc.v1 import image_service_pb2 as pb

IMAGE = bytes(range(256)) * 40  # stands in for the image bytes; never decoded here


def process_request(data: bytes = IMAGE) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[
            pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=720, height=720))]),
            pb.Pipeline(operations=[pb.Operation(blur=pb.Blur(sigma=2))]),
        ],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP, quality=70),
    )


def reassembled(message, data):
    """The message as protobuf's own parse would have produced it."""
    if data is not None:
        message.source.data = bytes(data)
    return message


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field, hand-encoded (number < 16, payload < 128 bytes)."""
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_field_numbers_match_the_descriptors():
    for message in (pb.ProcessImageRequest, pb.DescribeImageRequest):
        source = message.DESCRIPTOR.fields_by_name["source"]
        assert source.number == wire.SOURCE_FIELD
        assert source.message_type is pb.ImageSource.DESCRIPTOR
    data = pb.ImageSource.DESCRIPTOR.fields_by_name["data"]
    assert data.number == wire.SOURCE_DATA_FIELD and data.type == data.TYPE_BYTES


def test_the_source_comes_back_as_a_view_into_the_received_bytes():
    raw = process_request().SerializeToString()
    message, data = wire.decode_request(raw, pb.ProcessImageRequest)
    assert isinstance(data, memoryview) and data.obj is raw  # no copy was made
    assert bytes(data) == IMAGE
    assert not message.HasField("source")
    assert message.output.quality == 70 and len(message.pipelines) == 2
    assert reassembled(message, data) == pb.ProcessImageRequest.FromString(raw)


def test_describe_requests_are_lifted_too():
    raw = pb.DescribeImageRequest(
        source=pb.ImageSource(data=IMAGE), detect=True
    ).SerializeToString()
    message, data = wire.decode_request(raw, pb.DescribeImageRequest)
    assert bytes(data) == IMAGE and message.detect


def test_a_source_after_the_other_fields_is_found():
    request = process_request()
    source = pb.ProcessImageRequest(source=request.source).SerializeToString()
    request.ClearField("source")
    raw = request.SerializeToString() + source
    message, data = wire.decode_request(raw, pb.ProcessImageRequest)
    assert data is not None and data.obj is raw
    assert reassembled(message, data) == pb.ProcessImageRequest.FromString(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(process_request(b"").SerializeToString(), id="empty-source"),
        pytest.param(pb.ProcessImageRequest().SerializeToString(), id="no-source"),
        # Protobuf merges a repeated message field; the last data wins.
        pytest.param(
            field(1, field(1, b"first")) + field(1, field(1, b"second")), id="source-twice"
        ),
        pytest.param(field(1, field(1, b"a") + field(1, b"b")), id="data-twice"),
        pytest.param(field(1, field(1, b"img") + field(9, b"x")), id="unknown-field-in-source"),
        pytest.param(field(1, field(1, b"img")) + field(15, b"future"), id="unknown-top-level"),
    ],
)
def test_every_other_shape_equals_protobufs_own_parse(raw):
    message, data = wire.decode_request(raw, pb.ProcessImageRequest)
    assert reassembled(message, data) == pb.ProcessImageRequest.FromString(raw)


def test_shapes_that_must_not_be_lifted_are_not():
    for raw in (
        field(1, field(1, b"first")) + field(1, field(1, b"second")),
        field(1, field(1, b"img") + field(9, b"x")),
    ):
        _, data = wire.decode_request(raw, pb.ProcessImageRequest)
        assert data is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xff\xff", id="garbage"),
        pytest.param(b"\x0a\x05abc", id="length-past-the-end"),
        pytest.param(b"\x08", id="truncated-varint"),
        pytest.param(field(1, b"\x0a\x09abc"), id="truncated-inside-source"),
        pytest.param(b"\x00\x01", id="field-number-zero"),
        pytest.param(b"\x0f", id="invalid-wire-type"),
    ],
)
def test_undecodable_bytes_are_malformed_requests(raw):
    with pytest.raises(DecodeError):
        pb.ProcessImageRequest.FromString(raw)  # protobuf agrees they are invalid
    with pytest.raises(MalformedRequest) as caught:
        wire.decode_request(raw, pb.ProcessImageRequest)
    assert caught.value.reason == "MALFORMED_REQUEST"
    assert caught.value.metadata == {"message_type": "imagesvc.v1.ProcessImageRequest"}


def test_random_corruptions_agree_with_protobuf():
    """Flip, cut and splice bytes of valid requests: decode_request either returns what
    protobuf parses, or raises MalformedRequest exactly when protobuf raises DecodeError."""
    rng = random.Random(20261122)
    base = process_request(bytes(rng.randrange(256) for _ in range(300))).SerializeToString()
    for _ in range(3000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(3)
            pos = rng.randrange(len(raw))
            if kind == 0:
                raw[pos] = rng.randrange(256)
            elif kind == 1:
                del raw[pos : pos + rng.randint(1, 8)]
            else:
                raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        raw = bytes(raw)
        try:
            expected = pb.ProcessImageRequest.FromString(raw)
        except DecodeError:
            with pytest.raises(MalformedRequest):
                wire.decode_request(raw, pb.ProcessImageRequest)
            continue
        message, data = wire.decode_request(raw, pb.ProcessImageRequest)
        assert reassembled(message, data) == expected
