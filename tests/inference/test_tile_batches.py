"""The tiles of `Detector.detect_tiles` and `Detector.face_hints` as batched Triton requests
(inference/client.py, "Tile requests"): with the model's served ``max_batch_size`` learned by
``ready()``, the tiles go stacked, at most that many a request; unknown or 1, one request per
tile. Unit: a fake gRPC client that runs the real full-range ONNX model in process; then the
same over the real local Triton, and the hints' wall time batched against unbatched (measured,
not asserted)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from inference import face_refine
from inference.blazeface import FULL_RANGE
from inference.client import TILE_MODEL, Detector, _tile_batches, default_model_repository
from inference.detection import Detection
from inference.errors import InferenceError
from inference.mediapipe_detectors import MediaPipeDetector, SPECS
from tests.inference.test_tiled_pass import crowd, inputs


def _tensor(name, datatype, shape):
    return SimpleNamespace(name=name, datatype=datatype, shape=shape)


class FakeTriton:
    """Stands for ``tritonclient.grpc.aio.InferenceServerClient`` serving the full-range
    model with ``max_batch_size``: readiness answers as Triton does for
    model_repository/'s config, ``infer`` runs the model's ONNX file in process (any batch
    up to the limit) and records each request's input shape."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.requests: list[list[int]] = []
        path = default_model_repository() / TILE_MODEL / "1" / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    async def is_server_ready(self, client_timeout=None):
        return True

    async def is_model_ready(self, name, client_timeout=None):
        return name == TILE_MODEL

    async def get_model_metadata(self, name, client_timeout=None):
        size, count = FULL_RANGE.input_size, FULL_RANGE.num_anchors
        return SimpleNamespace(
            inputs=[_tensor("input", FULL_RANGE.input_dtype, [-1, size, size, 3])],
            outputs=[
                _tensor("regressors", "FP32", [-1, count, 16]),
                _tensor("classificators", "FP32", [-1, count, 1]),
            ],
        )

    async def get_model_config(self, name, as_json=False, client_timeout=None):
        size, count = FULL_RANGE.input_size, FULL_RANGE.num_anchors
        return {
            "config": {
                "max_batch_size": self.max_batch_size,
                "input": [
                    {
                        "name": "input",
                        "data_type": f"TYPE_{FULL_RANGE.input_dtype}",
                        "dims": [size, size, 3],
                    }
                ],
                "output": [
                    {"name": "regressors", "data_type": "TYPE_FP32", "dims": [count, 16]},
                    {"name": "classificators", "data_type": "TYPE_FP32", "dims": [count, 1]},
                ],
            }
        }

    async def infer(self, model_name, inputs, outputs=None, client_timeout=None):
        (infer_input,) = inputs
        shape = infer_input.shape()
        assert model_name == TILE_MODEL and infer_input.name() == "input"
        assert 1 <= shape[0] <= max(1, self.max_batch_size)
        self.requests.append(shape)
        assert infer_input.datatype() == "UINT8"  # the face models take pixels
        tensor = np.frombuffer(infer_input._raw_content, np.uint8).reshape(shape)
        regressors, classificators = self.session.run(None, {"input": tensor})
        served = {"regressors": regressors, "classificators": classificators}
        return SimpleNamespace(as_numpy=lambda name: served[name])

    async def close(self):
        pass


async def _detector(max_batch_size: int, *, ready: bool = True) -> tuple[Detector, FakeTriton]:
    """A detector of the full-range model over a FakeTriton; ``ready``: after a passing
    ``ready()`` (which learns the max batch)."""
    model = MediaPipeDetector.from_repository(TILE_MODEL, default_model_repository())
    reported: list[str] = []
    detector = Detector(
        "127.0.0.1:1",
        models=[model],
        on_inference=lambda m, s: reported.append(m),
        retry_after_s=0,  # a failed ready() must not open the breaker on the next call
    )
    detector.reported = reported
    fake = FakeTriton(max_batch_size)
    detector._client = fake
    if ready:
        assert await detector.ready() is True
        assert dict(detector.max_batch_sizes) == {TILE_MODEL: max_batch_size}
    return detector, fake


def _boxes(detections: list[Detection]) -> np.ndarray:
    return np.array(
        [[d.confidence, d.left, d.top, d.width, d.height] for d in detections], np.float64
    ).reshape(-1, 5)


def assert_same(batched: list[Detection], alone: list[Detection]) -> None:
    """The same detections, in the same order, within float tolerance (onnxruntime's batched
    kernels may round differently from its single-image ones)."""
    assert [(d.class_name, d.model) for d in batched] == [(d.class_name, d.model) for d in alone]
    np.testing.assert_allclose(_boxes(batched), _boxes(alone), rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def crowd_inputs():
    """The crowd of small faces of test_tiled_pass.py: its 512 px first input and its 2048 px
    tiled copy."""
    canvas, _ = crowd()
    return inputs(canvas)


# -- unit: a fake Triton -------------------------------------------------------------------


@pytest.mark.parametrize("image", ["astronaut", "crowd"])
async def test_the_hints_are_one_request_with_max_batch_16_and_one_a_tile_with_1(
    crowd_inputs, image
):
    # The astronaut (512x512): 4 tiles; the crowd's 512x341 first input: 6 (kept squarish).
    rgb = skimage.data.astronaut() if image == "astronaut" else crowd_inputs[0]
    count = len(face_refine.plan_tiles(rgb.shape[1], rgb.shape[0], face_refine.HINT_GRID))
    assert count == (4 if image == "astronaut" else 6)
    batched, fake16 = await _detector(16)
    alone, fake1 = await _detector(1)
    found_batched = await batched.face_hints(rgb)
    found_alone = await alone.face_hints(rgb)
    size = FULL_RANGE.input_size
    assert fake16.requests == [[count, size, size, 3]]
    assert fake1.requests == [[1, size, size, 3]] * count
    # on_inference: once per request, a batched one included.
    assert batched.reported == [TILE_MODEL] and alone.reported == [TILE_MODEL] * count
    assert len(found_alone) >= (1 if image == "astronaut" else face_refine.MIN_FACE_HINTS)
    assert_same(found_batched, found_alone)


@pytest.mark.parametrize(
    ("max_batch_size", "ready", "batches"),
    [(16, True, [12]), (5, True, [5, 5, 2]), (1, True, [1] * 12), (16, False, [1] * 12)],
    ids=["16", "5", "1", "unknown"],
)
async def test_the_tiled_pass_batches_up_to_the_learned_limit(
    crowd_inputs, max_batch_size, ready, batches
):
    first_input, big = crowd_inputs
    size = (first_input.shape[1], first_input.shape[0])
    detector, fake = await _detector(max_batch_size, ready=ready)
    reference, _ = await _detector(1)
    found = await detector.detect_tiles(big, first=[], first_size=size)
    assert [shape[0] for shape in fake.requests] == batches
    assert len(detector.reported) == len(batches)
    expected = await reference.detect_tiles(big, first=[], first_size=size)
    assert len(expected) >= 10
    assert_same(found, expected)


async def test_a_contract_mismatch_forgets_the_max_batch():
    detector, fake = await _detector(16)
    fake.max_batch_size = 0  # no batch dimension: the contract no longer holds
    assert await detector.ready() is False
    assert dict(detector.max_batch_sizes) == {}
    # Back to one request per tile.
    fake.max_batch_size = 1
    await detector.face_hints(skimage.data.astronaut())  # 4 tiles
    assert [shape[0] for shape in fake.requests] == [1] * 4


async def test_a_batched_response_with_too_few_rows_is_a_bad_response():
    detector, fake = await _detector(16)
    run = fake.session.run
    fake.session.run = lambda names, feeds: [out[:-1] for out in run(names, feeds)]
    with pytest.raises(InferenceError) as caught:
        await detector.face_hints(skimage.data.astronaut())
    assert caught.value.reason == "TRITON_BAD_RESPONSE"


def test_a_tile_of_another_shape_goes_alone_and_the_order_is_kept():
    model = MediaPipeDetector(TILE_MODEL, SPECS[TILE_MODEL], classes=("face",))

    def tile(rows=1, side=192, dtype=np.uint8):
        return {"input": np.zeros((rows, side, side, 3), dtype)}

    tensors = [tile(), tile(side=128), tile(), tile(rows=2), tile(), tile(dtype=np.float32), tile()]
    assert _tile_batches(model, tensors, 16) == [[0, 2, 4, 6], [1], [3], [5]]
    assert _tile_batches(model, tensors, 2) == [[0, 2], [1], [3], [4, 6], [5]]
    assert _tile_batches(model, tensors, 1) == [[i] for i in range(7)]


# -- over the real Triton ------------------------------------------------------------------


@pytest.fixture
async def sidecar_detector(triton_sidecar):
    instance = Detector(triton_sidecar.grpc_url, timeout_s=10.0)
    assert await instance.ready() is True
    # The shipped configs (CPU and GPU) serve the full-range model with max_batch_size 16.
    assert instance.max_batch_sizes[TILE_MODEL] == 16
    yield instance
    await instance.close()


def _unbatched(detector: Detector) -> None:
    detector._max_batch[TILE_MODEL] = 1


@pytest.mark.triton
async def test_batched_tiles_find_what_single_tiles_find_over_triton(
    sidecar_detector, crowd_inputs
):
    first_input, big = crowd_inputs
    size = (first_input.shape[1], first_input.shape[0])
    hints = await sidecar_detector.face_hints(first_input)
    tiled = await sidecar_detector.detect_tiles(big, first=[], first_size=size)
    _unbatched(sidecar_detector)
    hints_alone = await sidecar_detector.face_hints(first_input)
    tiled_alone = await sidecar_detector.detect_tiles(big, first=[], first_size=size)
    assert len(hints_alone) >= face_refine.MIN_FACE_HINTS and len(tiled_alone) >= 10
    assert_same(hints, hints_alone)
    assert_same(tiled, tiled_alone)


@pytest.mark.triton
async def test_measure_face_hints_batched_and_unbatched(sidecar_detector, record_property):
    """Measured, not asserted: the wall time of ``face_hints`` on a 512 px image (4 tiles),
    as one batched request and as four, median of 15 after a warm-up, interleaved."""
    image = skimage.data.astronaut()
    times: dict[int, list[float]] = {16: [], 1: []}
    for _ in range(3):
        for limit in times:
            sidecar_detector._max_batch[TILE_MODEL] = limit
            await sidecar_detector.face_hints(image)
    for _ in range(15):
        for limit, seconds in times.items():
            sidecar_detector._max_batch[TILE_MODEL] = limit
            started = time.perf_counter()
            await sidecar_detector.face_hints(image)
            seconds.append(time.perf_counter() - started)
    batched, alone = (float(np.median(times[limit])) * 1000 for limit in (16, 1))
    record_property("face_hints_batched_ms", round(batched, 2))
    record_property("face_hints_unbatched_ms", round(alone, 2))
    print(f"\nface_hints(512x512): batched {batched:.1f} ms, one request per tile {alone:.1f} ms")
