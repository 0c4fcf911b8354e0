"""The generic python-backend ONNX runner: with a fake ``pb_utils``, and over real Triton."""

from __future__ import annotations

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

from inference.blazeface import FULL_RANGE, SHORT_RANGE, letterbox

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


def _model_config(name: str) -> dict:
    variant = VARIANTS[name]
    anchors = variant.num_anchors
    return {
        "name": name,
        "input": [
            {
                "name": "input",
                "data_type": "TYPE_FP32",
                "dims": [1, variant.input_size, variant.input_size, 3],
            }
        ],
        "output": [
            {"name": "regressors", "data_type": "TYPE_FP32", "dims": [1, anchors, 16]},
            {"name": "classificators", "data_type": "TYPE_FP32", "dims": [1, anchors, 1]},
        ],
        "parameters": {"intra_op_thread_count": {"string_value": "1"}},
    }


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
    good = np.random.default_rng(0).uniform(-1, 1, SHORT_RANGE.input_shape).astype(np.float32)
    requests = [
        _Request([_Tensor("input", good)]),
        _Request([]),  # missing input
        _Request([_Tensor("input", good.astype(np.float64))]),  # wrong dtype
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


def test_runner_honours_the_thread_parameter(runner_module):
    config = _model_config("blazeface_full_range")
    config["parameters"]["intra_op_thread_count"]["string_value"] = "2"
    model = _initialized(runner_module, "blazeface_full_range", config)
    assert model.session.get_session_options().intra_op_num_threads == 2


# -- over the real Triton -----------------------------------------------------------------


def _parity_inputs(name: str) -> list[np.ndarray]:
    variant = VARIANTS[name]
    random_input = np.random.default_rng(7).uniform(-1, 1, variant.input_shape).astype(np.float32)
    photo, _ = letterbox(skimage.data.astronaut(), variant.input_size)
    return [random_input, photo]


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_triton_python_backend_matches_onnxruntime_in_process(triton_sidecar, name):
    session = _in_process_session(name)
    client = triton_grpc.InferenceServerClient(triton_sidecar.grpc_url)
    try:
        for sample in _parity_inputs(name):
            infer_input = triton_grpc.InferInput("input", list(sample.shape), "FP32")
            infer_input.set_data_from_numpy(sample)
            result = client.infer(name, [infer_input], client_timeout=10.0)
            expected = session.run(["regressors", "classificators"], {"input": sample})
            for output, want in zip(("regressors", "classificators"), expected, strict=True):
                got = result.as_numpy(output)
                assert got.shape == want.shape
                assert np.max(np.abs(got - want)) <= 1e-5
    finally:
        client.close()
