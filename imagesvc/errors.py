"""Domain errors. Steps and the engine raise these; only ``server.interceptors`` turns them into
gRPC statuses, each with one ``google.rpc.ErrorInfo`` (domain ``imagesvc.v1``) and, for request
validation, a ``google.rpc.BadRequest`` listing every field violation (AIP-193).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

ERROR_DOMAIN = "imagesvc.v1"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # proto-JSON-ish path, e.g. "pipelines[0].operations[2].resize.width"
    description: str


class ImageSvcError(Exception):
    """Base of every error a caller can see. ``reason`` is stable and UPPER_SNAKE.

    ``retry_after_s``, when set, tells the caller when a retry may succeed (a
    ``google.rpc.RetryInfo`` in the status).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s


class InvalidRequest(ImageSvcError):
    """The request, pipeline or output options break a rule; all violations are listed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"


class MalformedRequest(ImageSvcError):
    """The request bytes are not a valid encoding of the RPC's protobuf message."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "MALFORMED_REQUEST"


class ImageFormatUnrecognized(ImageSvcError):
    """The source bytes are not an image format libvips recognises."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "IMAGE_FORMAT_UNRECOGNIZED"


class ImageFormatUnsupported(ImageSvcError):
    """A recognised format this deployment does not decode (loader not on the allowlist)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "IMAGE_FORMAT_UNSUPPORTED"


class ImageTooLarge(ImageSvcError):
    """The source header declares more pixels than IMAGESVC_MAX_SRC_RESOLUTION_MP allows."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "IMAGE_TOO_LARGE"


class ImageDecodeFailed(ImageSvcError):
    """The source is truncated or corrupt; libvips failed while reading its pixels."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "IMAGE_DECODE_FAILED"


class ResultTooLarge(ImageSvcError):
    """The planned result is wider or taller than IMAGESVC_MAX_RESULT_DIMENSION."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "RESULT_TOO_LARGE"


class ResultUnencodable(ImageSvcError):
    """The requested output format cannot hold the result (e.g. WebP beyond 16383 px a side)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "RESULT_UNENCODABLE"


class RequestTooCostly(ImageSvcError):
    """The planned work, memory or pixel count of the request exceeds the per-request budget
    (IMAGESVC_MAX_RESULT_MP, IMAGESVC_MAX_REQUEST_WORK_S, IMAGESVC_MAX_REQUEST_MEMORY_MB); the
    figures are in the ErrorInfo metadata."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "REQUEST_TOO_COSTLY"


class ResponseTooLarge(ImageSvcError):
    """The encoded result does not fit in one response message (IMAGESVC_MAX_MESSAGE_BYTES)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESPONSE_TOO_LARGE"


class Overloaded(ImageSvcError):
    """Every worker is busy and the wait queue is full; retry with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"


class DeadlineExceeded(ImageSvcError):
    """The RPC deadline passed between pipeline steps."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(ImageSvcError):
    """The caller cancelled the RPC."""

    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class DetectionUnavailable(ImageSvcError):
    """An anonymising operation could not detect its objects and its policy is to fail rather
    than return them visible; a retry after ``retry_after_s`` may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DETECTION_UNAVAILABLE"


class SegmentationUnavailable(ImageSvcError):
    """A segmentation operation could not segment the image (Triton down or slow, or
    segmentation not configured) and its policy is to fail rather than return the image
    unchanged; a retry after ``retry_after_s`` may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SEGMENTATION_UNAVAILABLE"


class Expired(ImageSvcError):
    """The request's ``expires`` time has passed; checked before the source is fetched."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "EXPIRED"


class Unauthenticated(ImageSvcError):
    """An ImageService call without an accepted bearer token (IMAGESVC_AUTH_TOKENS_PATH): the
    ``authorization`` metadata is not ``Bearer <token>``, or the token is not in the file."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "AUTH_TOKEN_INVALID"


class AuthTokenMissing(Unauthenticated):
    """An ImageService call without ``authorization`` metadata while tokens are required."""

    reason = "AUTH_TOKEN_MISSING"


class PermissionDenied(ImageSvcError):
    """With mutual TLS and IMAGESVC_TLS_ALLOWED_CLIENT_NAMES: the client certificate's subject CN
    and DNS SANs are none of the allowed names."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "CLIENT_NOT_ALLOWED"


class ProcessingFailed(ImageSvcError):
    """libvips failed on an image it had decoded; a bug or a libvips limit, not bad input."""

    code = grpc.StatusCode.INTERNAL
    reason = "PROCESSING_FAILED"


# --- url sources (imagesvc.sources) ---------------------------------------------------------


class SourceNotFound(ImageSvcError):
    """The origin answered 404 or 410 for the url source."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "SOURCE_NOT_FOUND"


class SourceForbidden(ImageSvcError):
    """The url source may not be fetched: it (or a redirect) is outside IMAGESVC_ALLOWED_SOURCES,
    resolves to an address the SSRF guard refuses (the message never names the address), or the
    origin answered 401 or 403."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "SOURCE_FORBIDDEN"


class SourceUnreachable(ImageSvcError):
    """The url source could not be fetched: connection or DNS failure, timeout, a 5xx or other
    unusable answer, a truncated body, too many redirects. ErrorInfo metadata ``cause`` says
    which; a RetryInfo comes with the transient ones."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SOURCE_UNREACHABLE"


class SourceTooLarge(ImageSvcError):
    """The url source's body is larger than IMAGESVC_MAX_SOURCE_BYTES (declared or streamed)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "SOURCE_TOO_LARGE"
