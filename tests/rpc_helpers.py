"""Helpers for tests that talk to the real server over gRPC."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def rich_status(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """(ErrorInfo reason, ErrorInfo metadata, BadRequest field violations) of a failed RPC."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no google.rpc.Status in the trailers of {error.code()}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    reason, metadata, violations = "", {}, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "imagesvc.v1"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, metadata, violations
