"""Domain error -> google.rpc.Status with ErrorInfo (and BadRequest for validation, RetryInfo when
the error says when to retry), AIP-193.

The status travels in the trailers: ``grpc-status-details-bin`` (the serialized Status, base64)
and ``grpc-message`` (the message, percent-encoded). gRPC clients refuse trailers over 16 KiB by
default and then report RESOURCE_EXHAUSTED without any of the details, so what goes in is capped
here, generically: every echoed string is truncated, at most ``MAX_VIOLATIONS`` field violations
are listed (fewer when they would not fit) and ErrorInfo metadata says how many were left out.
The trailers always stay within ``MAX_TRAILER_BYTES`` as HTTP/2 counts them, i.e. also under
gRPC's 8 KiB soft limit, above which a client rejects metadata at random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagesvc.errors import ERROR_DOMAIN, FieldViolation, ImageSvcError

MAX_TRAILER_BYTES = 8 * 1024  # gRPC's soft metadata limit; the hard one is 16 KiB
# What the trailers hold besides the two values: header names, grpc-status and the 32 bytes
# HTTP/2 counts per entry (3 x 32 + 46 bytes); rounded up.
TRAILER_OVERHEAD_BYTES = 256
MAX_VIOLATIONS = 20
MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 256
MAX_DESCRIPTION_BYTES = 256
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 128
# Caps on strings the code sets itself (the reason), so a wrong constant cannot break the bound.
MAX_REASON_BYTES = 64
VIOLATIONS_TOTAL = "violations_total"
VIOLATIONS_OMITTED = "violations_omitted"
ELLIPSIS = "…"


def truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary, ending in "…"
    when something was cut."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= max_bytes:
        return text
    room = max_bytes - len(ELLIPSIS.encode())
    return encoded[: max(room, 0)].decode("utf-8", errors="ignore") + ELLIPSIS


def percent_encoded_length(message: str) -> int:
    """Length of ``message`` as gRPC sends it in ``grpc-message``: UTF-8, with every byte outside
    printable ASCII, and '%', percent-encoded (3 bytes)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode())


def trailer_bytes(status: status_pb2.Status) -> int:
    """Bytes the status's two values take in the trailers: base64 of the serialized Status
    (padded, the larger variant) plus the percent-encoded message."""
    details = 4 * math.ceil(status.ByteSize() / 3)
    return details + percent_encoded_length(status.message)


def _metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    capped = {}
    for key, value in list(metadata.items())[:MAX_METADATA_ENTRIES]:
        capped[truncate(str(key), MAX_METADATA_KEY_BYTES)] = truncate(
            str(value), MAX_METADATA_VALUE_BYTES
        )
    return capped


def _violations(violations: Sequence[FieldViolation]):
    return [
        error_details_pb2.BadRequest.FieldViolation(
            field=truncate(v.field, MAX_FIELD_BYTES),
            description=truncate(v.description, MAX_DESCRIPTION_BYTES),
        )
        for v in violations[:MAX_VIOLATIONS]
    ]


def _build(
    error: ImageSvcError,
    message: str,
    metadata: dict[str, str],
    violations: list,
    total_violations: int,
) -> status_pb2.Status:
    metadata = dict(metadata)
    if len(violations) < total_violations:
        metadata[VIOLATIONS_TOTAL] = str(total_violations)
        metadata[VIOLATIONS_OMITTED] = str(total_violations - len(violations))
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=truncate(error.reason, MAX_REASON_BYTES), domain=ERROR_DOMAIN, metadata=metadata
        )
    )
    details = [info]
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(error.retry_after_s, 0.0) * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    if violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(error_details_pb2.BadRequest(field_violations=violations))
        details.append(bad_request)
    return status_pb2.Status(code=error.code.value[0], message=message, details=details)


def to_status_proto(error: ImageSvcError) -> status_pb2.Status:
    """The google.rpc.Status for ``error``, within ``MAX_TRAILER_BYTES`` in the trailers.

    With every string capped, the status without violations always fits (the caps are chosen
    so); violations are then listed, in order, as many as fit, at most ``MAX_VIOLATIONS``.
    """
    message = truncate(error.message, MAX_MESSAGE_BYTES)
    metadata = _metadata(error.metadata)
    violations = _violations(error.violations)
    total = len(error.violations)
    status = _build(error, message, metadata, violations, total)
    while violations and trailer_bytes(status) > MAX_TRAILER_BYTES - TRAILER_OVERHEAD_BYTES:
        violations.pop()
        status = _build(error, message, metadata, violations, total)
    return status


def to_grpc_status(error: ImageSvcError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(error))
