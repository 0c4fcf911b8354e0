"""Detector (FaceDetector): error mapping and contract checks (unit), face detection over real
Triton. Class routing and the pose/palm models: test_detector_classes.py."""

from __future__ import annotations

import asyncio

import dataclasses
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
from tritonclient.utils import InferenceServerException

from inference.blazeface import FULL_RANGE, SHORT_RANGE, resize_bilinear
from inference.client import (
    DEFAULT_MODELS,
    FACE_MODELS,
    FaceDetector,
    contract_problems,
    to_inference_error,
)
from inference.mediapipe_detectors import SPECS, MediaPipeDetector
from inference.detection import Detection
from inference.errors import InferenceError, InferenceUnavailable

# The astronaut's face in skimage.data.astronaut() (512x512), as BlazeFace boxes it:
# brow to chin, x 176..273 and y 78..175 measured; the bounds leave room for model drift.
ASTRONAUT_FACE = {"left": (165, 190), "top": (60, 95), "right": (260, 290), "bottom": (160, 190)}


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(np.rint(resize_bilinear(image, width, height)), 0, 255).astype(np.uint8)


def _assert_astronaut_face(face: Detection, scale: float = 1.0, offset=(0.0, 0.0)):
    edges = {
        "left": (face.left - offset[0]) / scale,
        "top": (face.top - offset[1]) / scale,
        "right": (face.right - offset[0]) / scale,
        "bottom": (face.bottom - offset[1]) / scale,
    }
    for edge, (low, high) in ASTRONAUT_FACE.items():
        assert low <= edges[edge] <= high, (
            f"{edge} {edges[edge]:.1f} not in [{low}, {high}]: {face}"
        )


# -- unit: no Triton ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "error_type", "reason"),
    [
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses",
            InferenceUnavailable,
            "TRITON_UNAVAILABLE",
        ),
        (
            "StatusCode.DEADLINE_EXCEEDED",
            "Deadline Exceeded",
            InferenceUnavailable,
            "TRITON_TIMEOUT",
        ),
        (
            "StatusCode.NOT_FOUND",
            "Request for unknown model",
            InferenceUnavailable,
            "MODEL_NOT_READY",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "Request for unknown model: 'blazeface_short_range' is not found",
            InferenceUnavailable,
            "MODEL_NOT_READY",
        ),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'x' is not ready",
            InferenceUnavailable,
            "MODEL_NOT_READY",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "unexpected shape for input 'input'",
            InferenceError,
            "TRITON_INVALID_ARGUMENT",
        ),
        ("StatusCode.INTERNAL", "boom", InferenceError, "TRITON_INTERNAL"),
        (None, "no status", InferenceError, "TRITON_UNKNOWN"),
    ],
)
def test_triton_errors_map_to_domain_errors(status, message, error_type, reason):
    error = to_inference_error(
        InferenceServerException(message, status=status), "blazeface_short_range"
    )
    assert type(error) is error_type
    assert error.reason == reason
    assert "blazeface_short_range" in str(error)


def _face_model(name: str, spec_of: str | None = None) -> MediaPipeDetector:
    """A BlazeFace model served as ``name``, decoded as ``spec_of``'s (default: its own)."""
    return MediaPipeDetector(name, SPECS[spec_of or name], classes=("face",))


FACE = frozenset({"face"})


def _tensor(name, datatype, shape):
    return SimpleNamespace(name=name, datatype=datatype, shape=shape)


def _contract(variant):
    """Metadata and config as Triton reports them for model_repository/'s configs: the
    batch dimension is -1 in the metadata and absent from the config's dims."""
    size, count, dtype = variant.input_size, variant.num_anchors, variant.input_dtype
    metadata = SimpleNamespace(
        inputs=[_tensor("input", dtype, [-1, size, size, 3])],
        outputs=[
            _tensor("regressors", "FP32", [-1, count, 16]),
            _tensor("classificators", "FP32", [-1, count, 1]),
        ],
    )
    config = {
        "max_batch_size": 16,
        "input": [
            {"name": "input", "data_type": f"TYPE_{dtype}", "dims": [str(size), str(size), "3"]}
        ],
        "output": [
            {"name": "regressors", "data_type": "TYPE_FP32", "dims": [str(count), "16"]},
            {"name": "classificators", "data_type": "TYPE_FP32", "dims": [str(count), "1"]},
        ],
    }
    return metadata, config


def test_contract_check_accepts_the_model_repository_contract():
    model = _face_model("blazeface_full_range")
    metadata, config = _contract(FULL_RANGE)
    assert contract_problems(model, metadata, config) == []
    config["max_batch_size"] = 1  # any batch limit: at 1 the client sends one tile per call
    assert contract_problems(model, metadata, config) == []


def test_contract_check_refuses_a_float_input_face_model():
    # A model repository from before the face models took uint8 pixels: refused at readiness,
    # not sent pixels it would read as [-1, 1] values.
    model = _face_model("blazeface_full_range")
    metadata, config = _contract(FULL_RANGE)
    metadata.inputs = [_tensor("input", "FP32", [-1, 192, 192, 3])]
    config["input"][0]["data_type"] = "TYPE_FP32"
    problems = "\n".join(contract_problems(model, metadata, config))
    assert "input 'input' in metadata is ('FP32', [192, 192, 3]), expected ('UINT8'" in problems
    assert "input 'input' in config is ('FP32', [192, 192, 3])" in problems


def test_contract_check_reports_each_mismatch():
    model = _face_model("blazeface_short_range")
    metadata, config = _contract(FULL_RANGE)  # the other model's shapes
    config["max_batch_size"] = 0
    config["output"][1]["data_type"] = "TYPE_FP16"
    metadata.outputs = metadata.outputs[:1]
    problems = contract_problems(model, metadata, config)
    joined = "\n".join(problems)
    assert "max_batch_size 0 < 1: no batch dimension" in joined
    assert (
        "input 'input' in metadata is ('UINT8', [192, 192, 3]), expected ('UINT8', [128, 128, 3])"
        in joined
    )
    assert "output 'classificators' missing from metadata" in joined
    assert "output 'classificators' in config is ('FP16', [2304, 1])" in joined


def test_contract_check_wants_a_dynamic_batch_dimension():
    """The pre-batching contract (max_batch_size 0, a fixed batch of 1 in the dims) fails."""
    model = _face_model("blazeface_short_range")
    metadata, config = _contract(SHORT_RANGE)
    metadata.inputs = [_tensor("input", "UINT8", [1, 128, 128, 3])]
    config["max_batch_size"] = 0
    config["input"][0]["dims"] = ["1", "128", "128", "3"]
    problems = "\n".join(contract_problems(model, metadata, config))
    assert "input 'input' in metadata has batch dimension [1], expected [-1]" in problems
    assert "input 'input' in config is ('UINT8', [1, 128, 128, 3])" in problems
    assert "max_batch_size 0 < 1" in problems


def test_detection_is_a_frozen_slotted_value():
    face = Detection("face", 0.9, 10.0, 20.0, 30.0, 40.0)
    assert (face.right, face.bottom) == (40.0, 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.left = 0.0  # type: ignore[misc]
    assert not hasattr(face, "__dict__")


def test_classes_and_models():
    detector = FaceDetector("127.0.0.1:1")
    assert detector.classes == frozenset({"face", "person", "hand"})
    assert detector.model_names == DEFAULT_MODELS
    assert dict(detector.class_weights) == {}  # the shipped classes files give no weights


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_triton_fails_fast_and_is_not_ready():
    # retry_after_s=0: no breaker, so every call really goes to the closed port.
    detector = FaceDetector(f"127.0.0.1:{_closed_port()}", timeout_s=0.5, retry_after_s=0)
    image = np.zeros((64, 64, 3), np.uint8)
    try:
        for _ in range(2):  # the second call meets a channel already in backoff
            started = time.perf_counter()
            with pytest.raises(InferenceUnavailable) as caught:
                await detector.detect(image)
            assert caught.value.reason == "TRITON_UNAVAILABLE"
            assert time.perf_counter() - started < 0.5
        started = time.perf_counter()
        assert await detector.ready() is False
        assert time.perf_counter() - started < 0.5
    finally:
        await detector.close()


async def test_breaker_fails_fast_after_a_failure_then_probes_again():
    detector = FaceDetector(f"127.0.0.1:{_closed_port()}", timeout_s=0.5, retry_after_s=0.3)
    image = np.zeros((64, 64, 3), np.uint8)
    try:
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(image)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(image)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        await asyncio.sleep(0.35)
        with pytest.raises(InferenceUnavailable) as caught:  # half-open: one real probe
            await detector.detect(image)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
    finally:
        await detector.close()


@pytest.mark.triton
async def test_a_passing_readiness_check_closes_the_breaker(triton_sidecar):
    detector = FaceDetector(triton_sidecar.grpc_url, timeout_s=5.0, retry_after_s=60)
    try:
        detector.timeout_s = 1e-6  # Triton slower than the client's own timeout: opens it
        with pytest.raises(InferenceUnavailable):
            await detector.detect(skimage.data.astronaut())
        detector.timeout_s = 5.0
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(skimage.data.astronaut())
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        assert await detector.ready() is True
        assert len(await detector.detect(skimage.data.astronaut(), classes=FACE)) == 1
    finally:
        await detector.close()


async def test_no_time_left_fails_before_calling_triton():
    detector = FaceDetector("127.0.0.1:1")
    with pytest.raises(InferenceUnavailable) as caught:
        await detector.detect(np.zeros((8, 8, 3), np.uint8), timeout_s=0)
    assert caught.value.reason == "TRITON_TIMEOUT"
    await detector.close()


async def test_a_bad_image_is_a_value_error():
    detector = FaceDetector("127.0.0.1:1")
    with pytest.raises(ValueError):
        await detector.detect(np.zeros((8, 8), np.uint8))
    await detector.close()


# -- over the real Triton -----------------------------------------------------------------


@pytest.fixture
async def detector(triton_sidecar):
    timings: list[tuple[str, float]] = []
    instance = FaceDetector(
        triton_sidecar.grpc_url, timeout_s=5.0, on_inference=lambda m, s: timings.append((m, s))
    )
    instance.timings = timings
    yield instance
    await instance.close()


@pytest.mark.triton
async def test_ready_against_the_sidecar(detector):
    assert await detector.ready() is True


@pytest.mark.triton
async def test_astronaut_has_exactly_one_face(detector):
    faces = await detector.detect(skimage.data.astronaut(), classes=FACE)
    assert len(faces) == 1
    face = faces[0]
    assert face.class_name == "face" and face.confidence > 0.85
    assert face.model in FACE_MODELS
    _assert_astronaut_face(face)
    # Only the face models ran, each once.
    assert sorted(model for model, _ in detector.timings) == sorted(FACE_MODELS)
    assert all(seconds > 0 for _, seconds in detector.timings)


@pytest.mark.triton
@pytest.mark.parametrize("size", [256, 1024])
async def test_coordinates_follow_the_image_scale(detector, size):
    faces = await detector.detect(_resized(skimage.data.astronaut(), size, size), classes=FACE)
    assert len(faces) == 1
    _assert_astronaut_face(faces[0], scale=size / 512)


@pytest.mark.triton
async def test_coordinates_survive_letterboxing_a_wide_image(detector):
    canvas = np.full((512, 900, 3), 128, np.uint8)
    canvas[:, 300:812] = skimage.data.astronaut()
    faces = await detector.detect(canvas, classes=FACE)
    assert len(faces) == 1
    _assert_astronaut_face(faces[0], offset=(300, 0))


@pytest.mark.triton
@pytest.mark.parametrize(
    "image",
    [skimage.data.coffee(), np.full((300, 400, 3), 128, np.uint8)],
    ids=["coffee", "flat-grey"],
)
async def test_no_face_no_detection(detector, image):
    assert await detector.detect(image, classes=FACE) == []


@pytest.mark.triton
async def test_a_deadline_shorter_than_inference_is_a_timeout(detector):
    with pytest.raises(InferenceUnavailable) as caught:
        await detector.detect(skimage.data.astronaut(), timeout_s=1e-4)
    assert caught.value.reason == "TRITON_TIMEOUT"


@pytest.mark.triton
async def test_a_missing_model_is_not_ready(triton_sidecar):
    # retry_after_s=0: the breaker that ready() opens must not hide the real call's reason.
    detector = FaceDetector(
        triton_sidecar.grpc_url,
        models=[_face_model("no_such_model", "blazeface_short_range")],
        retry_after_s=0,
    )
    try:
        assert await detector.ready() is False
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(skimage.data.astronaut())
        assert caught.value.reason == "MODEL_NOT_READY"
    finally:
        await detector.close()


@pytest.mark.triton
async def test_a_contract_mismatch_is_not_ready(triton_sidecar):
    # The short-range model decoded as if it were the full-range one.
    detector = FaceDetector(
        triton_sidecar.grpc_url,
        models=[_face_model("blazeface_short_range", "blazeface_full_range")],
    )
    try:
        assert await detector.ready() is False
    finally:
        await detector.close()


@pytest.mark.triton
async def test_measure_triton_latency(detector, record_property):
    """Measured, not asserted: per-inference latency over Triton and per-detect latency."""
    image = skimage.data.astronaut()
    for _ in range(5):
        await detector.detect(image)
    detector.timings.clear()
    detect_seconds = []
    for _ in range(50):
        started = time.perf_counter()
        await detector.detect(image)  # every model: face, person, hand
        detect_seconds.append(time.perf_counter() - started)
    lines = []
    for name in DEFAULT_MODELS:
        ms = np.array([s for m, s in detector.timings if m == name]) * 1000
        lines.append(
            f"{name}: p50 {np.percentile(ms, 50):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms"
        )
        record_property(f"{name}_p50_ms", round(float(np.percentile(ms, 50)), 3))
    ms = np.array(detect_seconds) * 1000
    lines.append(
        f"detect(512x512): p50 {np.percentile(ms, 50):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms"
    )
    record_property("detect_p50_ms", round(float(np.percentile(ms, 50)), 3))
    print("\n" + "\n".join(lines))
