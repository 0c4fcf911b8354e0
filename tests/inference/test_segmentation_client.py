"""inference.segmentation_client.PersonSegmenter: the real Triton call, its failures, the
shared circuit breaker; malformed responses through a fake client (unit tests only)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import numpy as np
import pytest
import skimage.data
from tritonclient.utils import InferenceServerException

from inference.breaker import CircuitBreaker
from inference.client import ABANDONED_CALL_DEADLINE_S, FaceDetector
from inference.errors import InferenceError, InferenceUnavailable
from inference.segmentation import SELFIE_SEGMENTATION
from inference.segmentation_client import PersonSegmenter


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_segment_through_triton(triton_sidecar):
    calls = []
    segmenter = PersonSegmenter(
        triton_sidecar.grpc_url,
        timeout_s=10.0,
        on_inference=lambda model, seconds: calls.append((model, seconds)),
    )
    try:
        assert await segmenter.ready() is True
        astronaut = np.ascontiguousarray(skimage.data.astronaut()[:400, :300])
        mask = await segmenter.segment(astronaut)
        assert mask.shape == (400, 300) and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0
        assert 0.2 < (mask > 0.5).mean() < 0.9
        # A flat picture has no person.
        flat = await segmenter.segment(np.full((64, 96, 3), 128, np.uint8))
        assert flat.shape == (64, 96) and (flat > 0.5).mean() < 0.05
        assert [model for model, _ in calls] == ["selfie_segmentation"] * 2
        assert segmenter.model_name == "selfie_segmentation"
    finally:
        await segmenter.close()


async def test_a_missing_model_is_unavailable_and_leaves_the_breaker_closed(triton_sidecar):
    breaker = CircuitBreaker(retry_after_s=60)
    segmenter = PersonSegmenter(
        triton_sidecar.grpc_url,
        timeout_s=10.0,
        breaker=breaker,
        model=replace(SELFIE_SEGMENTATION, name="no_such_model"),
    )
    try:
        assert await segmenter.ready() is False
        with pytest.raises(InferenceUnavailable) as caught:
            await segmenter.segment(np.zeros((32, 32, 3), np.uint8))
        assert caught.value.reason == "MODEL_NOT_READY"
        assert not breaker.is_open
    finally:
        await segmenter.close()


async def test_unreachable_triton_opens_the_breaker_shared_with_the_detector():
    url = f"127.0.0.1:{_closed_port()}"
    breaker = CircuitBreaker(retry_after_s=60)
    segmenter = PersonSegmenter(url, timeout_s=0.5, breaker=breaker)
    detector = FaceDetector(url, timeout_s=0.5, breaker=breaker)
    image = np.zeros((64, 64, 3), np.uint8)
    try:
        with pytest.raises(InferenceUnavailable) as caught:
            await segmenter.segment(image)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        with pytest.raises(InferenceUnavailable) as caught:
            await segmenter.segment(image)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(image)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        assert await segmenter.ready() is False
    finally:
        await segmenter.close()
        await detector.close()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
async def test_malformed_images_are_a_value_error(bad):
    segmenter = PersonSegmenter("127.0.0.1:1")
    with pytest.raises(ValueError):
        await segmenter.segment(bad)


class FakeResult:
    def __init__(self, output):
        self.output = output

    def as_numpy(self, name):
        assert name == "mask"
        return self.output


class FakeTriton:
    """The one tritonclient.grpc.aio call ``segment`` makes."""

    def __init__(self, output=None, error=None):
        self.output = output
        self.error = error
        self.timeouts: list[float] = []

    async def infer(self, name, inputs, outputs=None, client_timeout=None):
        self.timeouts.append(client_timeout)
        (infer_input,) = inputs
        assert infer_input.name() == "input" and infer_input.shape() == [1, 256, 256, 3]
        assert [o.name() for o in outputs] == ["mask"]
        if self.error is not None:
            raise self.error
        return FakeResult(self.output)

    async def close(self):
        pass


def _fake(fake: FakeTriton, **kwargs) -> PersonSegmenter:
    segmenter = PersonSegmenter("127.0.0.1:1", **kwargs)
    segmenter._client = fake  # what _grpc() returns
    return segmenter


async def test_the_mask_is_mapped_back_to_the_image():
    output = np.zeros((1, 256, 256, 1), np.float32)
    output[0, :, 128:, 0] = 1.0  # the right half
    fake = FakeTriton(output)
    segmenter = _fake(fake, timeout_s=2.0)
    mask = await segmenter.segment(np.zeros((50, 80, 3), np.uint8), timeout_s=0.3)
    assert mask.shape == (50, 80)
    assert (mask[:, :38] < 0.5).all() and (mask[:, 42:] > 0.5).all()
    # The timeout is kept on this side; the request itself is never cut short
    # (tests/inference/test_uncancelled_calls.py).
    assert fake.timeouts == [ABANDONED_CALL_DEADLINE_S]


@pytest.mark.parametrize(
    "output",
    [
        None,
        np.zeros((1, 128, 128, 1), np.float32),
        np.zeros((1, 256, 256, 2), np.float32),
        np.full((1, 256, 256, 1), np.nan, np.float32),
    ],
)
async def test_a_bad_output_is_a_bad_response(output):
    breaker = CircuitBreaker(retry_after_s=60)
    segmenter = _fake(FakeTriton(output), breaker=breaker)
    with pytest.raises(InferenceError) as caught:
        await segmenter.segment(np.zeros((16, 16, 3), np.uint8))
    assert caught.value.reason == "TRITON_BAD_RESPONSE"
    assert not isinstance(caught.value, InferenceUnavailable)
    assert not breaker.is_open


async def test_triton_errors_are_mapped():
    error = InferenceServerException("boom", status="StatusCode.INTERNAL")
    segmenter = _fake(FakeTriton(error=error))
    with pytest.raises(InferenceError) as caught:
        await segmenter.segment(np.zeros((16, 16, 3), np.uint8))
    assert caught.value.reason.startswith("TRITON_")
    assert not isinstance(caught.value, InferenceUnavailable)


async def test_close_is_idempotent():
    segmenter = PersonSegmenter("127.0.0.1:1")
    await segmenter.close()
    await segmenter.close()
    assert "selfie_segmentation" in repr(segmenter)
    await asyncio.sleep(0)
