"""The fuzzed requests of tests/fuzz/requests.py over real gRPC, against the session's server
(the real stack and the real Triton): every status is a deliberate one, never INTERNAL or
UNKNOWN, and arrives whole with its ErrorInfo, however many violations or long class names the
request had (the trailers are capped to fit). Deterministic; IMAGESVC_FUZZ_SCALE multiplies the
number of examples."""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings as hsettings

from tests.fuzz.requests import DELIBERATE, REQUESTS, build, sources
from tests.rpc_helpers import rich_status

SCALE = float(os.environ.get("IMAGESVC_FUZZ_SCALE", "1"))


@pytest.fixture(scope="module")
def data() -> list[bytes]:
    return sources()


@hsettings(
    max_examples=round(120 * SCALE),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=REQUESTS)
async def test_every_status_is_deliberate_and_arrives_whole(stub, data, request):
    try:
        await stub.ProcessImage(build(*request, data), timeout=30)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
        reason, _, _ = rich_status(error)
        assert reason in DELIBERATE, (code, reason, error.details())
