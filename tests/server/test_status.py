"""Domain errors -> google.rpc.Status: ErrorInfo always, BadRequest and RetryInfo when they apply,
and the trailers always small enough for a gRPC client's default metadata limit."""

from __future__ import annotations

import base64
from urllib.parse import quote

import grpc
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagesvc.errors import (
    DetectionUnavailable,
    FieldViolation,
    ImageTooLarge,
    InvalidRequest,
    ProcessingFailed,
)
from imagesvc.server import status as status_mod
from imagesvc.server.status import MAX_VIOLATIONS, to_grpc_status

# The bound, stated here rather than read from the module under test.
MAX_TRAILER_BYTES = 8 * 1024

# Printable ASCII except '%' goes into grpc-message as is; every other byte is percent-encoded.
GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def trailer_size(grpc_status: grpc.Status) -> int:
    """What the status costs in the trailers as HTTP/2 counts it (name + value + 32 per entry),
    computed independently of the module under test: grpc-status, the percent-encoded
    grpc-message and the base64 grpc-status-details-bin."""
    [(key, raw)] = grpc_status.trailing_metadata
    assert key == "grpc-status-details-bin"
    entries = [
        ("grpc-status", str(grpc_status.code.value[0])),
        ("grpc-message", quote(grpc_status.details, safe=GRPC_MESSAGE_SAFE)),
        (key, base64.b64encode(raw).decode()),
    ]
    return sum(len(name) + len(value) + 32 for name, value in entries)


def details(grpc_status: grpc.Status):
    status = status_mod.status_pb2.Status.FromString(grpc_status.trailing_metadata[0][1])
    assert status.code == grpc_status.code.value[0]
    assert status.message == grpc_status.details
    found = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                assert kind.__name__ not in found, "one detail of each kind"
                found[kind.__name__] = message
    return found


def is_cut_from(shown: str, original: str) -> bool:
    return shown == original or (
        shown.endswith("…") and original.startswith(shown[:-1]) and len(shown) < len(original)
    )


# Text of every kind (no lone surrogates: protobuf strings are valid Unicode), some of it long.
chars = st.characters(blacklist_categories=("Cs",))
texts = st.one_of(
    st.text(chars, max_size=40),
    st.tuples(st.text(chars, min_size=1, max_size=4), st.integers(1, 4000)).map(
        lambda t: t[0] * t[1]
    ),
)
violations = st.lists(st.builds(FieldViolation, texts, texts), max_size=400)
metadata = st.dictionaries(texts, texts, max_size=24)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(message=texts, items=violations, meta=metadata, retry=st.none() | st.floats(0, 3600))
def test_the_status_always_fits_the_trailer(message, items, meta, retry):
    error = InvalidRequest(message, metadata=meta, violations=items, retry_after_s=retry)
    grpc_status = to_grpc_status(error)
    assert trailer_size(grpc_status) <= MAX_TRAILER_BYTES
    assert grpc_status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert is_cut_from(grpc_status.details, message)
    found = details(grpc_status)
    info = found["ErrorInfo"]
    assert (info.reason, info.domain) == ("INVALID_REQUEST", "imagesvc.v1")
    listed = list(found["BadRequest"].field_violations) if "BadRequest" in found else []
    assert len(listed) <= MAX_VIOLATIONS
    for shown, original in zip(listed, items, strict=False):  # the first ones, in order
        assert is_cut_from(shown.field, original.field)
        assert is_cut_from(shown.description, original.description)
    if len(listed) < len(items):
        assert info.metadata["violations_total"] == str(len(items))
        assert info.metadata["violations_omitted"] == str(len(items) - len(listed))
    else:
        assert "violations_omitted" not in info.metadata
    assert ("RetryInfo" in found) == (retry is not None)


def test_a_short_status_is_passed_through_unchanged():
    error = ImageTooLarge("source is 60000x60000", metadata={"width": "60000"})
    grpc_status = to_grpc_status(error)
    assert grpc_status.details == "source is 60000x60000"
    found = details(grpc_status)
    assert dict(found["ErrorInfo"].metadata) == {"width": "60000"}
    assert set(found) == {"ErrorInfo"}


def test_many_violations_keep_the_first_twenty_and_count_the_rest():
    # 10 pipelines x 32 invalid blurs, as options.parse reports them.
    items = [
        FieldViolation(f"pipelines[{p}].operations[{o}].blur.sigma", "must be within (0, 100]")
        for p in range(10)
        for o in range(32)
    ]
    found = details(to_grpc_status(InvalidRequest("invalid request", violations=items)))
    listed = [(v.field, v.description) for v in found["BadRequest"].field_violations]
    assert listed == [(v.field, v.description) for v in items[:MAX_VIOLATIONS]]
    metadata = found["ErrorInfo"].metadata
    assert (metadata["violations_total"], metadata["violations_omitted"]) == ("320", "300")


def test_an_echoed_9000_character_value_is_truncated():
    name = "x" * 9000
    error = InvalidRequest(
        f"invalid request: pipelines[0].operations[0].blur_detections.classes[0]: unknown class "
        f"{name!r}",
        violations=[
            FieldViolation(
                "pipelines[0].operations[0].blur_detections.classes[0]",
                f"unknown class {name!r}; known: all, face",
            )
        ],
    )
    grpc_status = to_grpc_status(error)
    assert trailer_size(grpc_status) <= MAX_TRAILER_BYTES
    [violation] = details(grpc_status)["BadRequest"].field_violations
    assert violation.field == "pipelines[0].operations[0].blur_detections.classes[0]"
    assert (
        violation.description.startswith("unknown class 'xxx") and violation.description[-1] == "…"
    )
    assert len(violation.description.encode()) <= status_mod.MAX_DESCRIPTION_BYTES


def test_truncation_never_splits_a_character():
    cut = status_mod.truncate("é" * 1000, 101)
    assert cut.endswith("…") and set(cut[:-1]) == {"é"}
    assert len(cut.encode()) <= 101


def test_retry_info_carries_the_delay():
    error = DetectionUnavailable("detection unavailable", retry_after_s=2.5)
    grpc_status = to_grpc_status(error)
    assert grpc_status.code == grpc.StatusCode.UNAVAILABLE
    found = details(grpc_status)
    assert found["RetryInfo"].retry_delay.ToNanoseconds() == 2_500_000_000
    assert found["ErrorInfo"].reason == "DETECTION_UNAVAILABLE"
    assert "RetryInfo" not in details(to_grpc_status(ProcessingFailed("boom")))


def test_the_worst_case_fits_too():
    # Everything as long as it gets, in characters percent-encoding and UTF-8 make largest.
    huge = "€%\n" * 5000
    error = InvalidRequest(
        huge,
        metadata={f"{i}{huge}": huge for i in range(40)},
        violations=[FieldViolation(huge, huge)] * 500,
        retry_after_s=1e9,
    )
    grpc_status = to_grpc_status(error)
    assert trailer_size(grpc_status) <= MAX_TRAILER_BYTES
    found = details(grpc_status)
    assert found["ErrorInfo"].metadata["violations_total"] == "500"
    assert found["RetryInfo"].retry_delay.seconds == 10**9
