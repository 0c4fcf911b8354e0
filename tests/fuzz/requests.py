"""Hypothesis strategies for fuzzed ProcessImage requests: every field of the pipeline and
output messages, found by walking the proto descriptors (new fields are fuzzed as they are
added), takes extreme values: 0, 1, limits and one past them, 2^32-1, negative, tiny, huge,
NaN and infinities, unknown enum numbers, empty and 9,000-character class names, more
pipelines and operations than allowed."""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from tests.images import from_array, jpeg, png, textured
from imagesvc.v1 import image_service_pb2 as pb

UINTS = [
    0,
    1,
    2,
    3,
    7,
    31,
    255,
    256,
    1023,
    1024,
    1025,
    16383,
    16384,
    16385,
    65535,
    2**31 - 1,
    2**32 - 1,
]
INTS = [0, 1, -1, 90, 180, 270, 360, 45, 2**31 - 1, -(2**31)]
DOUBLES = [
    0.0, -0.0, 5e-324, 1e-9, 0.25, 0.5, 0.999999, 1.0, 1.0000001, 2.0, 7.5, 8.0, 8.0001, 20.0,
    20.5, 100.0, 100.0001, 1e9, 1.7e308, -1.0, -1e-9, -1.7e308,
    math.nan, math.inf, -math.inf,
]  # fmt: skip
ORDINARY_UINTS = [0, 2, 4, 16, 40, 64, 90, 100]
ORDINARY_DOUBLES = [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 10.0]
CLASSES = ["face", "all", "", " FACE ", "person", "x" * 9000, "ünïcødé", "face\x00"]


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of this type with any subset of their fields set to extreme values."""
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            # A map (e.g. weights): string keys, values of the map's value type.
            mapped = field_values(field.message_type.fields_by_name["value"], depth)
            if mapped is not None:
                fields[field.name] = st.one_of(
                    st.none(), st.dictionaries(st.sampled_from(CLASSES), mapped, max_size=3)
                )
            continue
        value = field_values(field, depth)
        if value is None:
            continue
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = st.one_of(st.none(), value)
    oneofs = {o.name: [f.name for f in o.fields] for o in descriptor.oneofs}

    def build(chosen: dict):
        msg = descriptor._concrete_class()
        for oneof_fields in oneofs.values():  # at most one member of each oneof
            present = [name for name in oneof_fields if chosen.get(name) is not None]
            for name in present[1:]:
                chosen[name] = None
        for name, value in chosen.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(msg, name)
            if isinstance(value, dict):
                target.update(value)
            elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                if field.is_repeated:
                    target.extend(value)
                else:
                    target.CopyFrom(value)
            elif field.is_repeated:
                target.extend(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        return message(field.message_type, depth + 1) if depth < 4 else None
    # Half of the values are ordinary ones, so that many requests get past validation and
    # exercise the engine; the other half are the extremes.
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(known) | st.sampled_from([max(known) + 1, 99, -1])
    if kind in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        return st.sampled_from(ORDINARY_UINTS) | st.sampled_from(UINTS)
    if kind in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
        return st.sampled_from(INTS)
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.sampled_from(ORDINARY_DOUBLES) | st.sampled_from(DOUBLES)
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.CPPTYPE_STRING and field.type == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(CLASSES)
    return None  # bytes: the source is chosen below


OPERATION = message(pb.Operation.DESCRIPTOR)
PIPELINES = st.lists(
    st.builds(lambda ops: pb.Pipeline(operations=ops), st.lists(OPERATION, min_size=1, max_size=5)),
    min_size=0,
    max_size=3,
) | st.just([pb.Pipeline(operations=[pb.Operation(flip=pb.Flip(horizontal=True))] * 33)] * 11)
OUTPUT = message(pb.OutputOptions.DESCRIPTOR)


def sources() -> list[bytes]:
    rgba = np.dstack([textured(17, 9), np.full((9, 17), 120, np.uint8)])
    return [
        jpeg(textured(40, 30)),
        png(rgba),
        png(textured(1, 1)),
        png(textured(1, 300)),
        from_array(textured(64, 48)).webpsave_buffer(),
    ]


SOURCES = st.integers(0, 4)  # index into sources()
REQUESTS = st.builds(
    lambda source, pipelines, output: (source, pipelines, output), SOURCES, PIPELINES, OUTPUT
)

# Deliberate outcomes of a request whose source is sound (README error table).
DELIBERATE = {
    "INVALID_REQUEST",
    "REQUEST_TOO_COSTLY",
    "RESULT_TOO_LARGE",
    "RESULT_UNENCODABLE",
    "RESPONSE_TOO_LARGE",
    "DETECTION_UNAVAILABLE",
}


def build(source_index: int, pipelines, output, data: list[bytes]) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data[source_index]), pipelines=pipelines, output=output
    )


# --- the request-level fields: sources, caching, presets, fallback -------------------------------

PRESET_NAMES = ["default", "thumb", "", "nope", "thumb ", "x" * 9000, "ünïcødé", "thumb\x00"]
ETAGS = [
    "",
    '"',
    '""',
    "*",
    'W/"abc"',
    '"0123456789abcdef0123456789abcdef"',
    '"0123456789abcdef0123456789abcdef.ZWFiYw"',  # carries a made-up origin validator
    '"0123456789abcdef0123456789abcdef.!!!"',
    '"x.' + "A" * 5000 + '"',
    "\x00\xff",
]
TIMESTAMP_SECONDS = [-(2**63), -62135596801, -1, 0, 1, 2**31, 253402300799, 253402300800, 2**63 - 1]
URLS = [
    "",
    "http://127.0.0.1:1/a.jpg",
    "http://169.254.169.254/",
    "http://[::1]/",
    "ftp://example.com/a.jpg",
    "http://user:pw@example.com/a.jpg",
    "http://" + "a" * 9000 + ".com/",
    "http://exa mple.com/",
    "\x00",
]
BUCKETS = ["", "ab", "bucket", "Bucket", "192.168.0.1", "b" * 64, "-bucket", "ünï", "a..b"]
KEYS = ["", "a.jpg", "k" * 1025, "a\x00b", "../../etc/passwd", "ünïcødé/ключ.jpg"]


def image_sources(data: list[bytes]) -> st.SearchStrategy:
    garbage = [b"", b"\xff\xd8\xff", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
    return st.one_of(
        st.builds(lambda blob: pb.ImageSource(data=blob), st.sampled_from(data)),
        st.builds(lambda blob: pb.ImageSource(data=blob), st.sampled_from(data + garbage)),
        st.builds(lambda url: pb.ImageSource(url=url), st.sampled_from(URLS)),
        st.builds(
            lambda bucket, key, version: pb.ImageSource(
                object=pb.ObjectLocation(bucket=bucket, key=key, version_id=version)
            ),
            st.sampled_from(BUCKETS),
            st.sampled_from(KEYS),
            st.sampled_from(["", "v1", "v" * 2000]),
        ),
        st.just(pb.ImageSource()),  # no kind at all
    )


def request_fields(data: list[bytes]) -> st.SearchStrategy:
    """Whole ProcessImageRequests whose request-level fields take extreme values (the pipelines
    are small and valid, so the outcome is up to those fields)."""

    def build_request(source, fallback, presets, etag, expires, skip):
        request = pb.ProcessImageRequest(
            source=source,
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=16))])],
            presets=presets,
            if_none_match=etag,
            skip_processing_formats=skip,
        )
        if fallback is not None:
            request.fallback_image.CopyFrom(fallback)
        if expires is not None:
            request.expires.seconds, request.expires.nanos = expires
        return request

    formats = [v.number for v in pb.ImageFormat.DESCRIPTOR.values] + [99, -1]
    return st.builds(
        build_request,
        image_sources(data),
        st.none() | image_sources(data),
        # Most draws keep each field ordinary, so that the others decide the outcome.
        st.just([])
        | st.lists(st.sampled_from(["default", "thumb"]), max_size=2)
        | st.lists(st.sampled_from(PRESET_NAMES), max_size=20),
        st.just("") | st.sampled_from(ETAGS),
        st.none()
        | st.none()
        | st.tuples(
            st.sampled_from(TIMESTAMP_SECONDS), st.sampled_from([0, 999_999_999, -1, 10**9])
        ),
        st.just([]) | st.lists(st.sampled_from(formats), max_size=3),
    )


# Deliberate outcomes of request_fields: DELIBERATE and the sources' and caching errors.
DELIBERATE_REQUEST_FIELDS = DELIBERATE | {
    "EXPIRED",
    "SOURCE_FORBIDDEN",
    "SOURCE_NOT_FOUND",
    "SOURCE_UNREACHABLE",
    "SOURCE_TOO_LARGE",
    "IMAGE_DECODE_FAILED",
    "IMAGE_FORMAT_UNRECOGNIZED",
    "IMAGE_FORMAT_UNSUPPORTED",
    "IMAGE_TOO_LARGE",
}
