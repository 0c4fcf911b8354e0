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
    """Base of every error a caller can see. ``reason`` is stable and UPPER_SNAKE."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)


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
    """An operation would produce an image over IMAGESVC_MAX_RESULT_DIMENSION."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "RESULT_TOO_LARGE"


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


class ProcessingFailed(ImageSvcError):
    """libvips failed on an image it had decoded; a bug or a libvips limit, not bad input."""

    code = grpc.StatusCode.INTERNAL
    reason = "PROCESSING_FAILED"
