"""The generic python-backend ONNX runner: with a fake ``pb_utils``, and over real Triton."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
import tritonclient.grpc as triton_grpc
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from inference.blazeface import FULL_RANGE, SHORT_RANGE, letterbox
from inference.sidecar import python_backend_config

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIRS = {
    "blazeface_short_range": REPO_ROOT / "model_repository" / "blazeface_short_range",
    "blazeface_full_range": REPO_ROOT / "model_repository" / "blazeface_full_range",
}
VARIANTS = {"blazeface_short_range": SHORT_RANGE, "blazeface_full_range": FULL_RANGE}


# -- a stand-in for the module the python-backend stub provides ---------------------------


class _TritonError:
    (
        UNKNOWN,
        INTERNAL,
        NOT_FOUND,
        INVALID_ARG,
        UNAVAILABLE,
        UNSUPPORTED,
        ALREADY_EXISTS,
        CANCELLED,
    ) = range(8)

    def __init__(self, message, code=None):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


class _Request:
    def __init__(self, tensors, cancelled=False):
        self.tensors, self.cancelled = {t.name(): t for t in tensors}, cancelled

    def is_cancelled(self):
        return self.cancelled


def _fake_pb_utils():
    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError = _TritonError
    module.Tensor = _Tensor
    module.InferenceResponse = _InferenceResponse
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    module.get_output_config_by_name = lambda config, name: next(
        o for o in config["output"] if o["name"] == name
    )
    module.triton_string_to_numpy = {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8}.__getitem__
    return module


@pytest.fixture
def runner_module(monkeypatch):
    """`inference.triton_onnx_model` imported as the stub would, against the fake."""
    monkeypatch.delenv("IMAGESVC_TRITON_PYTHONPATH", raising=False)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.delitem(sys.modules, "inference.triton_onnx_model", raising=False)
    return importlib.import_module("inference.triton_onnx_model")


def _model_config(name: str, config_file: str = "config.pbtxt") -> dict:
    """What Triton hands the runner: the derived python-backend config, as JSON."""
    derived = python_backend_config((MODEL_DIRS[name] / config_file).read_text())
    config = text_format.Parse(derived, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _initialized(module, name: str, config: dict | None = None):
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config or _model_config(name)),
            "model_name": name,
            "model_repository": str(MODEL_DIRS[name]),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    return model


def _in_process_session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(MODEL_DIRS[name] / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def test_runner_answers_every_request_and_reports_errors_per_request(runner_module):
    model = _initialized(runner_module, "blazeface_short_range")
    good = _random(SHORT_RANGE, 1, 0)
    requests = [
        _Request([_Tensor("input", good)]),
        _Request([]),  # missing input
        _Request([_Tensor("input", good.astype(np.float32))]),  # wrong dtype (they take pixels)
        _Request([_Tensor("input", good[:, :64])]),  # wrong shape (Triton checks this first)
        _Request([_Tensor("input", good)], cancelled=True),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)

    ok = responses[0]
    assert ok.error is None
    outputs = {t.name(): t.as_numpy() for t in ok.output_tensors}
    expected = _in_process_session("blazeface_short_range").run(
        ["regressors", "classificators"], {"input": good}
    )
    assert np.array_equal(outputs["regressors"], expected[0])
    assert np.array_equal(outputs["classificators"], expected[1])
    assert outputs["regressors"].dtype == np.float32

    for response in responses[1:4]:
        assert response.output_tensors == []
        assert response.error.code() == _TritonError.INVALID_ARG
    assert "missing input 'input'" in responses[1].error.message()
    assert responses[4].error.code() == _TritonError.CANCELLED
    model.finalize()


def test_runner_fails_to_load_when_config_and_graph_disagree(runner_module):
    config = _model_config("blazeface_short_range")
    config["output"][0]["name"] = "boxes"
    with pytest.raises(ValueError, match="boxes"):
        _initialized(runner_module, "blazeface_short_range", config)
    config = _model_config("blazeface_short_range")
    config["input"][0]["name"] = "image"
    with pytest.raises(ValueError, match="inputs"):
        _initialized(runner_module, "blazeface_short_range", config)


class _CountingSession:
    """Wraps the runner's onnxruntime session and records the batch of every run."""

    def __init__(self, session):
        self._session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(len(feeds["input"]))
        return self._session.run(names, feeds)


def _random(variant, batch: int, seed: int) -> np.ndarray:
    """Random pixels: the face models' input (uint8, mapped onto [-1, 1] in their graph)."""
    assert variant.input_dtype == "UINT8"
    shape = (batch, *variant.input_shape[1:])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("config_file", ["config.pbtxt", "configs/gpu.pbtxt"])
def test_runner_runs_the_requests_of_one_execute_as_one_batch(runner_module, config_file):
    name = "blazeface_full_range"
    model = _initialized(runner_module, name, _model_config(name, config_file))
    model.session = counting = _CountingSession(model.session)
    inputs = [_random(FULL_RANGE, batch, seed) for seed, batch in enumerate([1, 2, 1])]
    responses = model.execute([_Request([_Tensor("input", x)]) for x in inputs])

    assert counting.batches == [4], "one onnxruntime call for all four images"
    alone = _in_process_session(name)
    assert len(responses) == len(inputs)
    for x, response in zip(inputs, responses, strict=True):
        assert response.error is None
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        want = alone.run(["regressors", "classificators"], {"input": x})
        assert got["regressors"].shape == (len(x), FULL_RANGE.num_anchors, 16)
        np.testing.assert_allclose(got["regressors"], want[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["classificators"], want[1], rtol=0, atol=1e-5)


def test_a_bad_request_does_not_fail_the_rest_of_its_batch(runner_module):
    name = "blazeface_short_range"
    model = _initialized(runner_module, name)
    model.session = counting = _CountingSession(model.session)
    first, second = _random(SHORT_RANGE, 1, 1), _random(SHORT_RANGE, 1, 2)
    responses = model.execute(
        [
            _Request([_Tensor("input", first)]),
            _Request([_Tensor("input", first.astype(np.float32))]),
            _Request([_Tensor("input", second)], cancelled=True),
            _Request([_Tensor("input", second)]),
        ]
    )
    assert counting.batches == [2]
    assert responses[1].error.code() == _TritonError.INVALID_ARG
    assert responses[2].error.code() == _TritonError.CANCELLED
    alone = _in_process_session(name)
    for x, response in ((first, responses[0]), (second, responses[3])):
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        want = alone.run(["regressors"], {"input": x})[0]
        np.testing.assert_allclose(got["regressors"], want, rtol=0, atol=1e-5)


def test_runner_fails_to_load_when_shapes_break_the_backends_rule(runner_module):
    name = "blazeface_short_range"
    config = _model_config(name)
    config["input"][0]["dims"] = ["64", "64", "3"]
    with pytest.raises(ValueError, match=r"'input'.*does not match the config dims \[64, 64, 3\]"):
        _initialized(runner_module, name, config)
    config = _model_config(name)
    config["max_batch_size"] = 0  # the dims then lack the ONNX batch dimension
    with pytest.raises(ValueError, match="does not match"):
        _initialized(runner_module, name, config)
    # A fixed first dimension cannot be batched (the onnxruntime backend refuses it too).
    problem = runner_module._shape_problem([1, 128, 128, 3], [128, 128, 3], 16)
    assert "dynamic first dimension" in problem
    assert runner_module._shape_problem(["batch", 128, 128, 3], ["128", "128", "3"], 16) is None
    assert runner_module._shape_problem([1, 4], [1, 4], 0) is None


def test_runner_honours_the_thread_parameter(runner_module):
    config = _model_config("blazeface_full_range")
    config["parameters"]["intra_op_thread_count"]["string_value"] = "2"
    model = _initialized(runner_module, "blazeface_full_range", config)
    assert model.session.get_session_options().intra_op_num_threads == 2


# -- over the real Triton -----------------------------------------------------------------


def _parity_inputs(name: str) -> list[np.ndarray]:
    variant = VARIANTS[name]
    random_input = _random(variant, 1, 7)
    photo, _ = letterbox(skimage.data.astronaut(), variant.input_size, dtype=variant.input_dtype)
    return [random_input, photo]


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_triton_python_backend_matches_onnxruntime_in_process(triton_sidecar, name):
    session = _in_process_session(name)
    client = triton_grpc.InferenceServerClient(triton_sidecar.grpc_url)
    try:
        for sample in _parity_inputs(name):
            infer_input = triton_grpc.InferInput("input", list(sample.shape), "UINT8")
            infer_input.set_data_from_numpy(sample)
            result = client.infer(name, [infer_input], client_timeout=10.0)
            expected = session.run(["regressors", "classificators"], {"input": sample})
            for output, want in zip(("regressors", "classificators"), expected, strict=True):
                got = result.as_numpy(output)
                assert got.shape == want.shape
                assert np.max(np.abs(got - want)) <= 1e-5
    finally:
        client.close()


@pytest.fixture(scope="module")
def gpu_config_sidecar():
    """The real local Triton started with --model-config-name=gpu, as k8s/overlays/prod
    starts stock Triton: it loads every model's configs/gpu.pbtxt (KIND_GPU made KIND_CPU,
    this Triton has no GPU), dynamic batching included."""
    from inference.sidecar import TritonSidecar

    with TritonSidecar(model_config_name="gpu") as sidecar:
        yield sidecar


def _loaded_config(url: str, name: str) -> model_config_pb2.ModelConfig:
    client = triton_grpc.InferenceServerClient(url)
    try:
        return client.get_model_config(name, client_timeout=10.0).config
    finally:
        client.close()


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_triton_picks_the_config_the_config_name_asks_for(triton_sidecar, gpu_config_sidecar, name):
    default = _loaded_config(triton_sidecar.grpc_url, name)
    gpu = _loaded_config(gpu_config_sidecar.grpc_url, name)
    assert not default.HasField("dynamic_batching")
    assert gpu.HasField("dynamic_batching")
    assert gpu.backend == default.backend == "python"  # the local twins
    assert gpu.max_batch_size == default.max_batch_size > 0
    assert list(gpu.input) == list(default.input) and list(gpu.output) == list(default.output)


async def _concurrent_inferences(url: str, name: str, inputs: list[np.ndarray]) -> list:
    import tritonclient.grpc.aio as triton_aio

    client = triton_aio.InferenceServerClient(url)
    try:

        async def one(x):
            infer_input = triton_aio.InferInput("input", list(x.shape), "UINT8")
            infer_input.set_data_from_numpy(x)
            result = await client.infer(name, [infer_input], client_timeout=30.0)
            return result.as_numpy("regressors"), result.as_numpy("classificators")

        return await asyncio.gather(*(one(x) for x in inputs))
    finally:
        await client.close()


@pytest.mark.triton
async def test_the_gpu_config_batches_concurrent_requests_in_the_real_triton(gpu_config_sidecar):
    """Triton's dynamic batcher hands the runner several requests per execute (batch
    statistics prove it); every request still gets its own image's outputs."""
    name = "blazeface_full_range"
    url = gpu_config_sidecar.grpc_url
    session = _in_process_session(name)
    stats_client = triton_grpc.InferenceServerClient(url)
    batched = False
    try:
        for attempt in range(5):  # batching needs requests to queue; they do at once here
            inputs = [_random(FULL_RANGE, 1, 100 * attempt + i) for i in range(24)]
            results = await _concurrent_inferences(url, name, inputs)
            for x, (regressors, classificators) in zip(inputs, results, strict=True):
                want = session.run(["regressors", "classificators"], {"input": x})
                assert regressors.shape == (1, FULL_RANGE.num_anchors, 16)
                np.testing.assert_allclose(regressors, want[0], rtol=0, atol=1e-5)
                np.testing.assert_allclose(classificators, want[1], rtol=0, atol=1e-5)
            stats = stats_client.get_inference_statistics(name).model_stats[0]
            sizes = sorted(int(b.batch_size) for b in stats.batch_stats)
            if sizes and sizes[-1] > 1:
                batched = True
                break
        print(
            f"\n{name}: execution batch sizes seen {sizes}, "
            f"{stats.inference_count} inferences in {stats.execution_count} executions"
        )
    finally:
        stats_client.close()
    assert batched, f"no execution ran more than one request: batch sizes {sizes}"
    assert stats.execution_count < stats.inference_count
