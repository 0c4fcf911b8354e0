"""No Triton inference request is ever cancelled (inference.client ABANDONED_CALL_DEADLINE_S):
Triton 2.51 can crash when a client cancels one in flight. A call's timeout is kept on the
client's side; the request is abandoned, left to finish. Fakes for the contract, the real
sidecar for the crash it prevents."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import skimage.data

from inference.breaker import CircuitBreaker
from inference.client import ABANDONED_CALL_DEADLINE_S, MAX_ABANDONED_CALLS, FaceDetector
from inference.errors import CallerDeadlinePassed, InferenceUnavailable
from inference.segmentation_client import PersonSegmenter


class FakeResult:
    def as_numpy(self, name):
        return np.zeros((1, 256, 256, 1), np.float32)


class SlowTriton:
    """``infer`` that answers once ``release`` is set (or after ``delay`` seconds), counting
    the calls that finished and those that were cancelled."""

    def __init__(self, delay: float | None = None):
        self.delay = delay
        self.release = asyncio.Event()
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.deadlines: list[float | None] = []

    async def infer(self, name, inputs, outputs=None, client_timeout=None):
        self.started += 1
        self.deadlines.append(client_timeout)
        try:
            if self.delay is None:
                await self.release.wait()
            else:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return FakeResult()

    async def close(self):
        pass


def _segmenter(fake: SlowTriton, **kwargs) -> PersonSegmenter:
    segmenter = PersonSegmenter("127.0.0.1:1", **kwargs)
    segmenter._client = fake  # what _grpc() returns
    return segmenter


IMAGE = np.zeros((32, 32, 3), np.uint8)


async def test_a_call_past_its_timeout_is_left_to_finish():
    fake = SlowTriton(delay=0.2)
    abandoned: list[str] = []
    segmenter = _segmenter(fake, timeout_s=5.0, retry_after_s=0, on_abandoned=abandoned.append)
    with pytest.raises(InferenceUnavailable) as caught:
        await segmenter.segment(IMAGE, timeout_s=0.02)
    assert caught.value.reason == "TRITON_TIMEOUT"
    # The request went out with the long deadline, not the caller's 20 ms.
    assert fake.deadlines == [ABANDONED_CALL_DEADLINE_S]
    assert segmenter.abandoned_calls == 1 and fake.cancelled == 0
    assert abandoned == ["selfie_segmentation"]  # the metric's hook
    await asyncio.sleep(0.4)
    assert fake.finished == 1 and fake.cancelled == 0
    assert segmenter.abandoned_calls == 0
    await segmenter.close()


async def test_a_cancelled_caller_leaves_the_request_running():
    fake = SlowTriton()
    segmenter = _segmenter(fake, timeout_s=5.0)
    task = asyncio.ensure_future(segmenter.segment(IMAGE))
    while fake.started == 0:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.cancelled == 0 and segmenter.abandoned_calls == 1
    fake.release.set()
    await asyncio.sleep(0.01)
    assert fake.finished == 1 and segmenter.abandoned_calls == 0
    await segmenter.close()


async def test_the_callers_deadline_leaves_the_breaker_closed_the_clients_timeout_opens_it():
    fake = SlowTriton(delay=0.3)
    breaker = CircuitBreaker(retry_after_s=60)
    segmenter = _segmenter(fake, timeout_s=0.05, breaker=breaker)
    with pytest.raises(CallerDeadlinePassed):  # the caller's 10 ms ran out: not Triton's fault
        await segmenter.segment(IMAGE, timeout_s=0.01)
    assert not breaker.is_open
    with pytest.raises(InferenceUnavailable) as caught:  # the client's own 50 ms: Triton's
        await segmenter.segment(IMAGE)
    assert caught.value.reason == "TRITON_TIMEOUT"
    assert not isinstance(caught.value, CallerDeadlinePassed)
    assert breaker.fails_fast
    await segmenter.close()


async def test_too_many_unanswered_calls_fail_fast_without_calling():
    fake = SlowTriton()
    segmenter = _segmenter(fake, timeout_s=5.0, retry_after_s=0)
    for _ in range(MAX_ABANDONED_CALLS):
        with pytest.raises(CallerDeadlinePassed):
            await segmenter.segment(IMAGE, timeout_s=0.001)
    assert segmenter.abandoned_calls == MAX_ABANDONED_CALLS
    with pytest.raises(InferenceUnavailable) as caught:
        await segmenter.segment(IMAGE, timeout_s=1.0)
    assert caught.value.reason == "TRITON_UNAVAILABLE"
    assert fake.started == MAX_ABANDONED_CALLS  # the last one never reached Triton
    fake.release.set()
    await asyncio.sleep(0.01)
    assert segmenter.abandoned_calls == 0 and fake.cancelled == 0
    await segmenter.segment(IMAGE, timeout_s=1.0)  # answered again
    await segmenter.close()


async def test_close_lets_abandoned_calls_finish_first():
    fake = SlowTriton(delay=0.1)
    segmenter = _segmenter(fake, timeout_s=5.0, retry_after_s=0)
    with pytest.raises(CallerDeadlinePassed):
        await segmenter.segment(IMAGE, timeout_s=0.01)
    await segmenter.close()
    assert fake.finished == 1 and fake.cancelled == 0


@pytest.mark.triton
async def test_deadlines_shorter_than_inference_leave_triton_running(triton_sidecar):
    """Before requests were left to finish, this killed tritonserver 2.51 (SIGSEGV) within a
    few hundred cancelled requests, every time it was run."""
    abandoned: list[str] = []
    detector = FaceDetector(
        triton_sidecar.grpc_url, timeout_s=5.0, retry_after_s=0, on_abandoned=abandoned.append
    )
    image = skimage.data.astronaut()
    deadlines = itertools.cycle([0.002, 0.004, 0.006, 0.008, 0.011, 0.015])
    outcomes: dict[str, int] = {}
    try:
        for _ in range(150):
            results = await asyncio.gather(
                *[detector.detect(image, timeout_s=next(deadlines)) for _ in range(4)],
                return_exceptions=True,
            )
            for result in results:
                key = result.reason if isinstance(result, InferenceUnavailable) else "answered"
                outcomes[key] = outcomes.get(key, 0) + 1
            assert triton_sidecar.running, f"tritonserver died: {outcomes}"
        assert outcomes.get("TRITON_TIMEOUT", 0) > 0  # the deadlines did cut calls short
        assert set(abandoned) <= {"blazeface_short_range", "blazeface_full_range"} | {
            "pose_detection",
            "palm_detection_full",
        }
        assert len(abandoned) >= outcomes["TRITON_TIMEOUT"]
        for _ in range(500):  # every abandoned request answered
            if detector.abandoned_calls == 0:
                break
            await asyncio.sleep(0.01)
        assert detector.abandoned_calls == 0
        faces = await detector.detect(image, classes=frozenset({"face"}))
        assert len(faces) == 1
        assert triton_sidecar.running
    finally:
        await detector.close()
