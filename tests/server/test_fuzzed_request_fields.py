"""Fuzzed request-level fields over real gRPC (tests/fuzz/requests.py ``request_fields``):
sources of every kind (bytes, garbage, SSRF and malformed URLs, malformed object locations),
fallback images, presets (a server with a presets file, a default preset among them),
if_none_match, expires at and past Timestamp's range, skip_processing_formats. Every status is
deliberate, never INTERNAL or UNKNOWN, and carries its ErrorInfo. Deterministic;
IMAGESVC_FUZZ_SCALE multiplies the number of examples."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.fuzz.requests import DELIBERATE_REQUEST_FIELDS, request_fields, sources
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings
from tests.server.test_fuzzed_requests import SCALE

PRESETS = """
default:
  output: {format: IMAGE_FORMAT_PNG}
thumb:
  pipelines:
    - operations: [{resize: {width: 8, height: 8, type: RESIZING_TYPE_FILL}}]
"""


@pytest.fixture(scope="module")
async def fields_stub(tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "presets.yaml"
    path.write_text(PRESETS)
    # No Triton (nothing here detects); object sources enabled, their store unreachable.
    settings = server_settings(
        "127.0.0.1:1",
        presets_path=str(path),
        s3_enabled=True,
        s3_endpoint_url="http://127.0.0.1:1",
        source_download_timeout_s=2.0,
    )
    running = await app.start(settings, CollectorRegistry())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.ImageServiceStub(channel)
    await running.stop(1.0)


@hsettings(
    max_examples=round(150 * SCALE),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_request_field_gets_a_deliberate_answer(fields_stub, data):
    request = data.draw(request_fields(sources()))
    try:
        await fields_stub.ProcessImage(request, timeout=30)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
        reason, _, _ = rich_status(error)
        assert reason in DELIBERATE_REQUEST_FIELDS, (code, reason, error.details())
