"""Request-shape fuzzing in process: every fuzzed request (tests/fuzz/requests.py) gets the
README's answer from the engine: a result, or a deliberate domain error; never a crash, an
unexpected exception or INTERNAL. The same requests go over real gRPC in
tests/server/test_fuzzed_requests.py. Deterministic (derandomized); IMAGESVC_FUZZ_SCALE
multiplies the number of examples.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings

from tests.fuzz.requests import DELIBERATE, REQUESTS, build, sources
from tests.test_engine import RedBlockDetector
from imagesvc import vips
from imagesvc.engine import Engine
from imagesvc.errors import ImageSvcError, ProcessingFailed
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics

SCALE = float(os.environ.get("IMAGESVC_FUZZ_SCALE", "1"))
# Small images, a tight budget: the fuzzer explores shapes, tests/planning the budget's memory.
FUZZ_SETTINGS = dict(workers=1, max_request_work_s=1.5, max_result_mp=8.0)


@pytest.fixture(scope="module")
def engine():
    settings = Settings(**FUZZ_SETTINGS)
    vips.configure(settings)
    engine = Engine(settings, RedBlockDetector(), NullMetrics())
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def data() -> list[bytes]:
    return sources()


@hsettings(
    max_examples=round(600 * SCALE),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=REQUESTS)
def test_any_request_gets_a_result_or_a_deliberate_error(engine, data, request):
    msg = build(*request, data)
    try:
        parsed = parse_process_request(msg, engine.settings, engine.known_classes)
        result = asyncio.run(engine.process(parsed, time.monotonic() + 20))
    except ProcessingFailed as error:
        pytest.fail(f"INTERNAL for a request of sound shape: {error.message}\n{msg}")
    except ImageSvcError as error:
        event(error.reason)
        assert error.reason in DELIBERATE, (error.reason, error.message)
        return
    event("OK")
    assert result.width >= 1 and result.height >= 1
    decoded = vips.load(vips.memory_source(result.data))
    assert (decoded.width, decoded.height) == (result.width, result.height)
