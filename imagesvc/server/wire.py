"""Request decoding at the edge, with the source image bytes lifted out without a copy.

The Python protobuf runtime copies a bytes field twice on its way to the caller: into the
message when it parses, and out again on every attribute read. For a source image of a few
megabytes those two copies were about a tenth of the event loop's CPU per request (perf, on the
benchmark's 1.1 MB JPEGs). The service therefore receives requests as raw bytes and decodes them
here: when the request's ``source`` is exactly one ``data`` field, the image bytes come back as a
``memoryview`` into the received buffer and the rest of the request is parsed by protobuf as
usual. Any other shape (no source, a repeated source, another source kind, unknown fields inside
the source) takes protobuf's ordinary path, so the result always equals a plain parse.

Decoding here, rather than in gRPC's deserializer, also gives an undecodable request a
deliberate INVALID_ARGUMENT (``MALFORMED_REQUEST``); gRPC's own deserializer failure is UNKNOWN
without an ErrorInfo.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from imagesvc.errors import MalformedRequest

M = TypeVar("M", bound=Message)

# Field numbers shared by ProcessImageRequest and DescribeImageRequest (source = 1), and
# ImageSource's ``data`` (1). tests/server/test_wire.py checks them against the descriptors.
SOURCE_FIELD = 1
SOURCE_DATA_FIELD = 1

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Unusual(Exception):
    """An encoding this scanner leaves to protobuf (groups, truncation, bad wire types)."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise _Unusual


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of each field in
    buf[pos:end]; a length-delimited value is skipped by its length, never read."""
    fields = []
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Unusual
        value_start = pos
        if wire_type == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        elif wire_type == _LEN:
            length, value_start = _varint(buf, pos, end)
            pos = value_start + length
        else:
            raise _Unusual  # groups (3, 4) and invalid wire types
        if pos > end:
            raise _Unusual
        fields.append((number, wire_type, start, value_start, pos))
    return fields


def _lift(raw: bytes) -> tuple[bytes, memoryview] | None:
    """(the request without its source field, a view of the source's data) or None."""
    try:
        sources = [f for f in _fields(raw, 0, len(raw)) if f[0] == SOURCE_FIELD]
        if len(sources) != 1 or sources[0][1] != _LEN:
            return None
        _, _, field_start, value_start, field_end = sources[0]
        inner = _fields(raw, value_start, field_end)
    except _Unusual:
        return None
    if len(inner) != 1 or inner[0][:2] != (SOURCE_DATA_FIELD, _LEN):
        return None
    _, _, _, data_start, data_end = inner[0]
    rest = raw[:field_start] + raw[field_end:]  # only the small fields around the source
    return rest, memoryview(raw)[data_start:data_end]


def decode_request(raw: bytes, message_type: type[M]) -> tuple[M, memoryview | None]:
    """Parse ``raw`` as ``message_type`` (whose field 1 is an ImageSource).

    Returns the message and, when the source was lifted, a zero-copy view of ``source.data``;
    the message's own ``source`` is then left unset. With None the message is complete.
    Raises MalformedRequest when ``raw`` is not a valid encoding of the message.
    """
    lifted = _lift(raw)
    try:
        if lifted is not None:
            rest, data = lifted
            return message_type.FromString(rest), data
        return message_type.FromString(raw), None
    except DecodeError as error:
        name = message_type.DESCRIPTOR.full_name
        raise MalformedRequest(
            f"the request is not a valid {name} protobuf message",
            metadata={"message_type": name},
        ) from error
