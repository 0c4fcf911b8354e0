"""inference.autoquality_client.QualityPredictor: the served contract and its checks, the
prediction, errors, the breaker (shared with the detector) and the worker-thread bridge
(unit, on fakes), and predictions through the real local Triton."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pyvips
import skimage.data
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inference import autoquality as aq
from inference.autoquality_client import (
    MISMATCH,
    Prediction,
    QualityPredictor,
    contract_problems,
    served_spec,
)
from inference.breaker import CircuitBreaker
from inference.client import Detector
from inference.errors import InferenceError, InferenceUnavailable

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "autoquality"
SPEC = aq.CurveSpec.load(MODEL_DIR / "curve.json")
F, G = len(SPEC.formats), len(SPEC.grid)

Tensor = service_pb2.ModelMetadataResponse.TensorMetadata


def _metadata(in_dims=(-1, aq.N_FEATURES), out_dims=(-1, F, G), in_name="features"):
    return service_pb2.ModelMetadataResponse(
        name="autoquality",
        inputs=[Tensor(name=in_name, datatype="FP32", shape=list(in_dims))],
        outputs=[Tensor(name="log_dssim", datatype="FP32", shape=list(out_dims))],
    )


# What get_model_config(as_json=True)["config"] returns for config.pbtxt (int64 as strings).
CONFIG = {
    "name": "autoquality",
    "max_batch_size": 8,
    "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [str(aq.N_FEATURES)]}],
    "output": [{"name": "log_dssim", "data_type": "TYPE_FP32", "dims": [str(F), str(G)]}],
    "parameters": {
        "version": {"string_value": SPEC.version},
        "formats": {"string_value": ",".join(SPEC.formats)},
        "grid": {"string_value": ",".join(str(q) for q in SPEC.grid)},
        "features_version": {"string_value": str(aq.FEATURES_VERSION)},
        "intra_op_thread_count": {"string_value": "1"},
    },
}


def _config(**parameters: str) -> dict:
    config = copy.deepcopy(CONFIG)
    for key, value in parameters.items():
        config["parameters"][key] = {"string_value": value}
    return config


def _curves(rows: int = 1) -> np.ndarray:
    """Plausible decreasing log-DSSIM curves, (rows, F, G) float32."""
    grid = np.array(SPEC.grid, np.float32)
    one = np.stack([-3.0 - 0.06 * (grid - 15) - 0.2 * f for f in range(F)])
    return np.repeat(one[None], rows, axis=0).astype(np.float32)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FEATURES = np.linspace(-1, 1, aq.N_FEATURES, dtype=np.float32)


# -- the served contract ------------------------------------------------------------------


def test_served_spec_reads_the_parameters():
    spec = served_spec(CONFIG)
    assert (spec.formats, spec.grid, spec.version) == (SPEC.formats, SPEC.grid, SPEC.version)
    assert spec.features_version == aq.FEATURES_VERSION
    assert (spec.input_name, spec.output_name) == ("features", "log_dssim")
    with pytest.raises(ValueError, match="'version' missing"):
        served_spec(
            {"parameters": {k: v for k, v in CONFIG["parameters"].items() if k != "version"}}
        )
    with pytest.raises(ValueError, match="grid"):
        served_spec(_config(grid="15,20,x"))
    with pytest.raises(ValueError, match="grid"):
        served_spec(_config(grid="20,15"))
    with pytest.raises(ValueError, match="formats"):
        served_spec(_config(formats="jpeg,,webp"))
    with pytest.raises(ValueError, match="features_version"):
        served_spec(_config(features_version="two"))


def test_served_spec_reads_the_models_error_per_format_when_served():
    assert served_spec(CONFIG).log_errors == {}
    errors = ",".join(str(0.1 * (i + 1)) for i in range(F))
    spec = served_spec(_config(log_dssim_error=errors))
    assert spec.log_errors == pytest.approx({f: 0.1 * (i + 1) for i, f in enumerate(SPEC.formats)})
    # Still a value: equal specs hash alike.
    assert hash(spec) == hash(served_spec(_config(log_dssim_error=errors)))
    for bad in ("0.2", "0.2,x,0.3", "-0.1," + ",".join(["0.2"] * (F - 1))):
        with pytest.raises(ValueError, match="log_dssim_error"):
            served_spec(_config(log_dssim_error=bad))


def test_the_committed_model_serves_its_error():
    text = (MODEL_DIR / "config.pbtxt").read_text()
    [line] = [x for x in text.splitlines() if '"log_dssim_error"' in x]
    values = [float(v) for v in line.split('string_value: "')[1].split('"')[0].split(",")]
    curve = json.loads((MODEL_DIR / "curve.json").read_text())
    assert dict(zip(curve["formats"], values, strict=True)) == curve["log_dssim_error"]
    assert all(0 < v < 1 for v in values)


def test_the_committed_config_holds_the_contract():
    assert contract_problems(_metadata(), CONFIG) == []


def test_another_features_version_is_a_mismatch():
    problems = contract_problems(_metadata(), _config(features_version="3"))
    assert problems == [f"features_version 3 served, this service computes {aq.FEATURES_VERSION}"]
    # The check is against the version this code computes, whatever it is.
    assert contract_problems(_metadata(), _config(features_version="3"), features_version=3) == []


@pytest.mark.parametrize(
    ("metadata", "config", "expected"),
    [
        # Output dims that disagree with the formats / grid parameters.
        (_metadata(), _config(formats="jpeg,webp"), "output 'log_dssim' in metadata"),
        (_metadata(), _config(grid="15,50,95"), "output 'log_dssim' in config"),
        (_metadata(in_dims=(-1, 35)), CONFIG, "input 'features' in metadata"),
        (_metadata(in_name="x"), CONFIG, "inputs ['x'] != ['features']"),
        (_metadata(in_dims=(1, aq.N_FEATURES)), CONFIG, "input 'features' in metadata"),
        (_metadata(), {**CONFIG, "max_batch_size": 0}, "max_batch_size 0"),
        (
            _metadata(),
            {**CONFIG, "parameters": {"version": {"string_value": "v"}}},
            "parameter 'formats' missing",
        ),
    ],
)
def test_contract_problems_name_the_difference(metadata, config, expected):
    problems = contract_problems(metadata, config)
    assert any(expected in p for p in problems), problems


# -- a fake Triton ---------------------------------------------------------------------------


class FakeResult:
    def __init__(self, output):
        self.output = output

    def as_numpy(self, name):
        assert name == "log_dssim"
        return self.output


class FakeTriton:
    """The tritonclient.grpc.aio calls QualityPredictor makes."""

    def __init__(self, config=CONFIG, output=None, infer_delay=0.0, error=None):
        self.config = config
        self.output = _curves() if output is None else output
        self.infer_delay = infer_delay
        self.error = error
        self.calls: list[str] = []
        self.cancelled = False

    async def is_server_ready(self, client_timeout=None):
        self.calls.append("server_ready")
        return True

    async def is_model_ready(self, name, client_timeout=None):
        self.calls.append("model_ready")
        return True

    async def get_model_metadata(self, name, client_timeout=None):
        self.calls.append("metadata")
        return _metadata()

    async def get_model_config(self, name, as_json=False, client_timeout=None):
        self.calls.append("config")
        return {"config": self.config}

    async def infer(self, name, inputs, outputs=None, client_timeout=None):
        self.calls.append("infer")
        assert client_timeout is not None and client_timeout > 0
        (infer_input,) = inputs
        assert infer_input.name() == "features" and infer_input.shape() == [1, aq.N_FEATURES]
        try:
            await asyncio.sleep(self.infer_delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return FakeResult(self.output)

    async def close(self):
        pass


def _predictor(fake: FakeTriton, **kwargs) -> QualityPredictor:
    predictor = QualityPredictor("127.0.0.1:1", **kwargs)
    predictor._client = fake  # what _grpc() returns
    return predictor


async def test_predict_reads_the_served_spec_once_then_predicts():
    fake = FakeTriton()
    seen = []
    predictor = _predictor(fake, on_inference=lambda name, s: seen.append((name, s)))
    assert predictor.version is None and predictor.formats is None and predictor.spec is None
    prediction = await predictor.predict(FEATURES)
    assert fake.calls == ["metadata", "config", "infer"]  # read lazily: ready() never ran
    assert predictor.version == SPEC.version and predictor.formats == SPEC.formats
    assert prediction.version == SPEC.version and prediction.grid == SPEC.grid
    assert prediction.formats == SPEC.formats
    np.testing.assert_allclose(prediction.curves["webp"], _curves()[0, 1])
    await predictor.predict(FEATURES)
    assert fake.calls[3:] == ["infer"]
    assert [name for name, _ in seen] == ["autoquality"] * 2


async def test_a_features_version_mismatch_is_not_ready_and_never_predicts():
    fake = FakeTriton(config=_config(features_version="3"))
    predictor = _predictor(fake)
    assert await predictor.ready() is False
    assert "features_version 3 served, this service computes 2" in predictor.not_ready_reason
    assert predictor.version is None
    with pytest.raises(InferenceError) as caught:
        await predictor.predict(FEATURES)
    assert caught.value.reason == MISMATCH and not isinstance(caught.value, InferenceUnavailable)
    assert "infer" not in fake.calls
    assert not predictor.breaker.is_open  # the model is wrong, Triton is fine
    # Lazily, without ready(), the same.
    fresh = _predictor(FakeTriton(config=_config(features_version="3")))
    with pytest.raises(InferenceError) as caught:
        await fresh.predict(FEATURES)
    assert caught.value.reason == MISMATCH
    assert "infer" not in fresh._client.calls
    assert "features_version 3 served" in str(caught.value)
    # The served model fixed: ready() reads it again and predict works.
    fake.config = CONFIG
    assert await predictor.ready() is True and predictor.not_ready_reason is None
    assert (await predictor.predict(FEATURES)).version == SPEC.version


async def test_a_served_model_that_changes_is_followed_by_ready():
    fake = FakeTriton()
    predictor = _predictor(fake)
    assert await predictor.ready() is True
    fake.config = _config(version="aq9-new")
    assert await predictor.ready() is True
    assert predictor.version == "aq9-new"
    assert (await predictor.predict(FEATURES)).version == "aq9-new"


async def test_formats_and_grid_come_from_the_served_config():
    fake = FakeTriton(config=_config(formats="avif,jpeg,webp"))
    prediction = await _predictor(fake).predict(FEATURES)
    assert prediction.formats == ("avif", "jpeg", "webp")
    np.testing.assert_allclose(prediction.curves["avif"], _curves()[0, 0])


@pytest.mark.parametrize(
    "output",
    [
        np.where(np.arange(G) == 3, np.nan, _curves()).astype(np.float32),
        np.where(np.arange(G) == 0, -np.inf, _curves()).astype(np.float32),
        _curves(2),
        _curves()[:, :2],
        None,
    ],
)
async def test_a_bad_output_is_a_bad_response(output):
    fake = FakeTriton()
    fake.output = output
    with pytest.raises(InferenceError) as caught:
        await _predictor(fake).predict(FEATURES)
    assert caught.value.reason == "TRITON_BAD_RESPONSE"


@pytest.mark.parametrize(
    "features",
    [
        np.zeros(aq.N_FEATURES - 1, np.float32),
        np.zeros((1, aq.N_FEATURES), np.float32),
        np.full(aq.N_FEATURES, np.nan, np.float32),
        np.full(aq.N_FEATURES, np.inf, np.float32),
        np.array(["a"] * aq.N_FEATURES),
    ],
)
async def test_bad_features_are_a_value_error(features):
    fake = FakeTriton()
    with pytest.raises(ValueError):
        await _predictor(fake).predict(features)
    assert fake.calls == []


async def test_no_time_left_fails_before_calling_triton():
    fake = FakeTriton()
    predictor = _predictor(fake)
    with pytest.raises(InferenceUnavailable) as caught:
        await predictor.predict(FEATURES, timeout_s=0)
    assert caught.value.reason == "TRITON_TIMEOUT"
    assert fake.calls == [] and not predictor.breaker.is_open


async def test_triton_errors_are_mapped_and_only_an_outage_opens_the_breaker():
    fake = FakeTriton(error=InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"))
    predictor = _predictor(fake, retry_after_s=60)
    with pytest.raises(InferenceError) as caught:
        await predictor.predict(FEATURES)
    assert caught.value.reason == "TRITON_INVALID_ARGUMENT"
    fake.error = InferenceServerException(
        "Request for unknown model: 'autoquality' is not found", status="StatusCode.UNAVAILABLE"
    )
    with pytest.raises(InferenceUnavailable) as caught:
        await predictor.predict(FEATURES)
    assert caught.value.reason == "MODEL_NOT_READY"
    assert not predictor.breaker.is_open  # this model missing must not stop the detector
    fake.error = InferenceServerException("gone", status="StatusCode.UNAVAILABLE")
    with pytest.raises(InferenceUnavailable) as caught:
        await predictor.predict(FEATURES)
    assert caught.value.reason == "TRITON_UNAVAILABLE"
    assert predictor.breaker.fails_fast


# -- Prediction -------------------------------------------------------------------------------


def test_prediction_quality_for_points_and_unknown_formats():
    prediction = Prediction(
        version="v", grid=SPEC.grid, curves=dict(zip(SPEC.formats, _curves()[0], strict=True))
    )
    q = prediction.quality_for("jpeg", 0.01)
    assert q == aq.predicted_quality(SPEC.grid, _curves()[0, 0], 0.01)
    assert prediction.quality_for("jpeg", 0.005) > q  # a stricter target, a higher quality
    assert 40 <= prediction.quality_for("jpeg", 0.01, low=40, high=60) <= 60
    points = prediction.points("avif")
    assert [p[0] for p in points] == list(SPEC.grid)
    assert all(
        math.isclose(d, math.exp(v), rel_tol=1e-6)
        for (_, d), v in zip(points, _curves()[0, 2], strict=True)
    )
    with pytest.raises(KeyError, match="heic"):
        prediction.quality_for("heic", 0.01)
    with pytest.raises(KeyError):
        prediction.points("heic")
    with pytest.raises(KeyError):
        prediction.curves["heic"]
    with pytest.raises(ValueError):  # read-only
        prediction.curves["jpeg"][0] = 0.0
    with pytest.raises(TypeError):
        prediction.curves["png"] = np.zeros(G)
    with pytest.raises(ValueError, match="grid"):
        Prediction(version="v", grid=(15, 20), curves={"jpeg": np.zeros(3)})


# -- the breaker --------------------------------------------------------------------------------


async def test_unreachable_triton_then_the_circuit_is_open():
    async with QualityPredictor(
        f"127.0.0.1:{_closed_port()}", timeout_s=0.5, retry_after_s=60
    ) as predictor:
        started = time.perf_counter()
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        started = time.perf_counter()
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        assert time.perf_counter() - started < 0.05
        assert await predictor.ready() is False
        assert "TRITON_UNAVAILABLE" in predictor.not_ready_reason


async def test_a_breaker_shared_with_the_detector_opens_for_both():
    url = f"127.0.0.1:{_closed_port()}"
    image = np.zeros((64, 64, 3), np.uint8)
    breaker = CircuitBreaker(retry_after_s=60)
    detector = Detector(url, timeout_s=0.5, breaker=breaker)
    predictor = QualityPredictor(url, timeout_s=0.5, breaker=breaker)
    try:
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(image)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        # And the other way round.
        breaker.reset()
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect(image)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
    finally:
        await detector.close()
        await predictor.close()


# -- predict_blocking ---------------------------------------------------------------------------


async def test_predict_blocking_runs_on_the_loop_from_a_worker_thread():
    fake = FakeTriton()
    predictor = _predictor(fake)
    loop = asyncio.get_running_loop()
    threads = []
    original = fake.infer

    async def infer(*args, **kwargs):
        threads.append(threading.get_ident())
        return await original(*args, **kwargs)

    fake.infer = infer
    prediction = await asyncio.to_thread(predictor.predict_blocking, loop, FEATURES, 1.0)
    assert prediction.version == SPEC.version
    assert threads == [threading.get_ident()]  # Triton was called on the loop's thread
    with pytest.raises(ValueError):
        await asyncio.to_thread(predictor.predict_blocking, loop, FEATURES[:3], 1.0)
    with pytest.raises(InferenceError) as caught:
        fake.config = _config(features_version="3")
        await predictor.ready()
        await asyncio.to_thread(predictor.predict_blocking, loop, FEATURES, 1.0)
    assert caught.value.reason == MISMATCH


async def test_predict_blocking_runs_meanwhile_while_the_call_is_in_flight():
    fake = FakeTriton(infer_delay=0.3)
    predictor = _predictor(fake)
    loop = asyncio.get_running_loop()
    called = threading.Event()
    original = fake.infer

    async def infer(*args, **kwargs):
        called.set()
        return await original(*args, **kwargs)

    fake.infer = infer
    seen = []

    def meanwhile():
        # The call has been sent and has not answered: this work overlaps its round trip.
        seen.append((called.wait(2.0), threading.get_ident()))

    prediction = await asyncio.to_thread(
        predictor.predict_blocking, loop, FEATURES, 1.0, meanwhile=meanwhile
    )
    assert prediction.version == SPEC.version
    assert len(seen) == 1 and seen[0][0] and seen[0][1] != threading.get_ident()


async def test_what_meanwhile_raises_propagates_and_the_call_is_left_not_cancelled():
    fake = FakeTriton(infer_delay=0.3)
    predictor = _predictor(fake)
    loop = asyncio.get_running_loop()

    def meanwhile():
        raise TimeoutError("the request's deadline passed")

    with pytest.raises(TimeoutError, match="deadline"):
        await asyncio.to_thread(
            predictor.predict_blocking, loop, FEATURES, 1.0, meanwhile=meanwhile
        )
    await predictor.close()  # lets the abandoned call finish first
    assert predictor.abandoned_calls == 0 and not fake.cancelled


async def test_predict_blocking_on_the_loop_thread_is_a_runtime_error():
    predictor = _predictor(FakeTriton())
    with pytest.raises(RuntimeError, match="loop's thread"):
        predictor.predict_blocking(asyncio.get_running_loop(), FEATURES, 1.0)


async def test_predict_blocking_gives_up_after_its_timeout_and_leaves_the_call():
    fake = FakeTriton(infer_delay=0.8)  # a call far slower than its timeout
    predictor = _predictor(fake, timeout_s=0.2)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    with pytest.raises(InferenceUnavailable) as caught:
        await asyncio.to_thread(predictor.predict_blocking, loop, FEATURES, 5.0)
    assert caught.value.reason == "TRITON_TIMEOUT"
    assert 0.2 <= time.perf_counter() - started < 0.8
    # Given up on, not cancelled: Triton 2.51 can crash on a cancelled request
    # (tests/inference/test_uncancelled_calls.py).
    assert predictor.abandoned_calls == 1 and not fake.cancelled
    with pytest.raises(InferenceUnavailable) as caught:
        await asyncio.to_thread(predictor.predict_blocking, loop, FEATURES, 0)
    assert caught.value.reason == "TRITON_TIMEOUT"
    await predictor.close()  # lets the abandoned call finish first
    assert predictor.abandoned_calls == 0 and not fake.cancelled


def test_predict_blocking_without_a_running_loop_is_unavailable():
    loop = asyncio.new_event_loop()
    try:
        predictor = _predictor(FakeTriton())
        with pytest.raises(InferenceUnavailable) as caught:
            predictor.predict_blocking(loop, FEATURES, 1.0)
        assert caught.value.reason == "TRITON_UNAVAILABLE"
    finally:
        loop.close()


# -- through the real local Triton --------------------------------------------------------------


def _features_of(photo: np.ndarray) -> np.ndarray:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(photo))
    return aq.features(image.copy(interpretation="srgb" if image.bands == 3 else "b-w"))


def _assert_plausible(prediction: Prediction) -> None:
    assert prediction.version == SPEC.version
    assert prediction.grid == SPEC.grid
    assert set(prediction.curves) == {"jpeg", "webp", "avif"}
    for fmt, curve in prediction.curves.items():
        assert curve.shape == (G,) and np.all(np.isfinite(curve)), fmt
        assert np.all(np.diff(curve) <= 1e-5), (fmt, curve)  # non-increasing
        q = prediction.quality_for(fmt, 0.02, low=30, high=95)
        assert 30 <= q <= 95, (fmt, q)
        assert prediction.quality_for(fmt, 0.005) >= prediction.quality_for(fmt, 0.02), fmt
        assert prediction.quality_for(fmt, 0.005) > prediction.quality_for(fmt, 0.05), fmt


async def test_ready_and_predict_through_triton(triton_sidecar):
    assert "autoquality" in triton_sidecar.model_names
    seen = []
    async with QualityPredictor(
        triton_sidecar.grpc_url, timeout_s=10.0, on_inference=lambda n, s: seen.append(n)
    ) as predictor:
        assert await predictor.ready() is True, predictor.not_ready_reason
        assert predictor.not_ready_reason is None
        curve_json = json.loads((MODEL_DIR / "curve.json").read_text())
        assert predictor.version == curve_json["version"] == SPEC.version
        assert predictor.formats == tuple(curve_json["formats"])
        assert predictor.spec.grid == tuple(curve_json["grid"])
        astronaut = await predictor.predict(_features_of(skimage.data.astronaut()))
        _assert_plausible(astronaut)
        camera = await predictor.predict(_features_of(skimage.data.camera()))
        _assert_plausible(camera)
        assert not np.allclose(astronaut.curves["jpeg"], camera.curves["jpeg"])
        assert seen == ["autoquality"] * 2
        # From a worker thread, as the encoder calls it.
        loop = asyncio.get_running_loop()
        features = _features_of(skimage.data.astronaut())
        blocking = await asyncio.to_thread(predictor.predict_blocking, loop, features, 10.0)
        for fmt in SPEC.formats:
            np.testing.assert_allclose(blocking.curves[fmt], astronaut.curves[fmt], atol=1e-6)


async def test_predict_without_ready_reads_the_served_spec(triton_sidecar):
    async with QualityPredictor(triton_sidecar.grpc_url, timeout_s=10.0) as predictor:
        assert predictor.version is None
        _assert_plausible(await predictor.predict(_features_of(skimage.data.coffee())))
        assert predictor.version == SPEC.version


async def test_a_missing_model_is_not_ready_and_leaves_the_shared_breaker_closed(triton_sidecar):
    breaker = CircuitBreaker(retry_after_s=60)
    async with QualityPredictor(
        triton_sidecar.grpc_url, timeout_s=10.0, breaker=breaker, model_name="no_such_model"
    ) as predictor:
        assert await predictor.ready() is False
        assert "not ready" in predictor.not_ready_reason
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "MODEL_NOT_READY"
        assert not breaker.is_open


async def test_a_passing_readiness_check_closes_the_shared_breaker(triton_sidecar):
    breaker = CircuitBreaker(retry_after_s=60)
    async with QualityPredictor(
        triton_sidecar.grpc_url, timeout_s=10.0, breaker=breaker
    ) as predictor:
        breaker.trip()  # e.g. the detector saw Triton down
        with pytest.raises(InferenceUnavailable) as caught:
            await predictor.predict(FEATURES)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        assert await predictor.ready() is True
        assert not breaker.is_open
        _assert_plausible(await predictor.predict(_features_of(skimage.data.astronaut())))
