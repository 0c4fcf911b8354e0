"""Generic Triton python-backend model that runs ``model.onnx`` with onnxruntime.

The local Triton (from ``nvidia-pytriton``) has no onnxruntime backend, so
`inference.sidecar` turns every ``backend: "onnxruntime"`` model of ``model_repository/``
into a ``backend: "python"`` model whose version folder holds this file, as ``model.py``,
next to the unchanged ``model.onnx``. The model's config keeps its inputs and outputs, so
clients see the same contract as from stock Triton's onnxruntime backend.

Contract
--------
- Input and output names and dtypes come from the model config; the ONNX graph must have
  exactly those inputs and at least those outputs, and their shapes must agree with the
  config as the onnxruntime backend requires: with ``max_batch_size > 0`` the ONNX
  dimension 0 must be dynamic and the rest must equal ``dims``; with ``max_batch_size:
  0`` the shape must equal ``dims``. Otherwise `initialize` fails and Triton marks the
  model unavailable, as stock Triton would.
- Config ``parameters`` honoured, with the onnxruntime backend's keys:
  ``intra_op_thread_count`` (default 1: the sidecar shares a small CPU budget with
  libvips) and ``inter_op_thread_count`` (default 1).
- `execute` returns exactly one response per request, in order. With ``max_batch_size >
  0`` (and ``dynamic_batching`` in the config) Triton may hand it several requests at
  once, each with its own batch dimension: their inputs are concatenated along dimension
  0, run in one onnxruntime call and split back per request, as the onnxruntime backend
  does. Failures are per-request ``TritonError`` responses (``INVALID_ARG`` for bad
  inputs, ``INTERNAL`` otherwise); a request that is wrong does not fail the others.

Packages
--------
The python-backend stub embeds the system ``libpython`` in isolated mode, which ignores
``PYTHONPATH``. The launcher therefore passes the directories holding numpy and
onnxruntime in ``IMAGESVC_TRITON_PYTHONPATH`` (by default ``.venv/opt/triton-python``,
from ``inference/triton-python-requirements.txt``; numpy<2, see `inference.sidecar`), and
this module puts them at the front of ``sys.path`` before importing anything that needs
them, including ``triton_python_backend_utils`` (which imports numpy). Where the variable
is unset this is a no-op.

This file must stay self-contained: it is copied into the model repository and imported
by the stub, where the ``inference`` package is not importable.
"""

import os
import sys

_EXTRA_PATHS = [p for p in os.environ.get("IMAGESVC_TRITON_PYTHONPATH", "").split(os.pathsep) if p]
sys.path[:0] = [p for p in _EXTRA_PATHS if p not in sys.path]

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument  # noqa: E402

MODEL_FILENAME = "model.onnx"


def _int_parameter(model_config: dict, key: str, default: int) -> int:
    value = model_config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else int(value)


def _shape_problem(onnx_shape, dims, max_batch_size: int):
    """Why an ONNX tensor shape (ints, or str/None for dynamic dimensions) cannot serve
    config ``dims``, following the onnxruntime backend's rule; None if it can."""
    model = [d if isinstance(d, int) and d >= 0 else -1 for d in onnx_shape]
    expected = [int(d) for d in dims]
    if max_batch_size > 0:
        if not model or model[0] != -1:
            return f"batching needs a dynamic first dimension, the ONNX shape is {model}"
        model = model[1:]
    if len(model) != len(expected) or any(
        m != -1 and m != e for m, e in zip(model, expected, strict=True)
    ):
        return f"the ONNX shape {model} does not match the config dims {expected}"
    return None


class TritonPythonModel:
    """Runs the version folder's ``model.onnx`` for the inputs and outputs of the config."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch_size = int(model_config.get("max_batch_size", 0))
        self.input_names = [entry["name"] for entry in model_config["input"]]
        self.input_dtypes = {
            entry["name"]: pb_utils.triton_string_to_numpy(entry["data_type"])
            for entry in model_config["input"]
        }
        self.output_names = [entry["name"] for entry in model_config["output"]]
        self.output_dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(model_config, name)["data_type"]
            )
            for name in self.output_names
        }

        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(model_config, "intra_op_thread_count", 1)
        options.inter_op_num_threads = _int_parameter(model_config, "inter_op_thread_count", 1)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        model_path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILENAME)
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

        # Fail the load, not every request, when config and graph disagree.
        graph_inputs = {i.name: i.shape for i in self.session.get_inputs()}
        graph_outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if set(graph_inputs) != set(self.input_names):
            raise ValueError(
                f"{self.model_name}: config inputs {self.input_names} "
                f"!= ONNX inputs {sorted(graph_inputs)}"
            )
        missing = set(self.output_names) - set(graph_outputs)
        if missing:
            raise ValueError(
                f"{self.model_name}: config outputs {sorted(missing)} "
                f"are not ONNX outputs {sorted(graph_outputs)}"
            )
        for entry in model_config["input"] + model_config["output"]:
            shape = graph_inputs.get(entry["name"], graph_outputs.get(entry["name"]))
            problem = _shape_problem(shape, entry.get("dims", []), self.max_batch_size)
            if problem:
                raise ValueError(f"{self.model_name}: tensor {entry['name']!r}: {problem}")

    def execute(self, requests):
        responses = [None] * len(requests)
        runnable = []  # (index, feeds)
        for index, request in enumerate(requests):
            try:
                runnable.append((index, self._feeds(request)))
            except _Cancelled:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("request cancelled", _code("CANCELLED"))
                )
            except Exception as error:
                responses[index] = self._error_response(error)
        if len(runnable) > 1 and self.max_batch_size > 0:
            try:
                for (index, _), response in zip(
                    runnable, self._run_batched([feeds for _, feeds in runnable]), strict=True
                ):
                    responses[index] = response
                runnable = []
            except Exception:
                pass  # run them one by one below, so an error lands on its own request
        for index, feeds in runnable:
            try:
                responses[index] = self._response(self._run(feeds))
            except Exception as error:
                responses[index] = self._error_response(error)
        return responses

    def _feeds(self, request) -> dict:
        if getattr(request, "is_cancelled", None) is not None and request.is_cancelled():
            raise _Cancelled()
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise _BadRequest(f"{self.model_name}: missing input {name!r}")
            array = tensor.as_numpy()
            if array.dtype != self.input_dtypes[name]:
                expected = np.dtype(self.input_dtypes[name])
                raise _BadRequest(
                    f"{self.model_name}: input {name!r} is {array.dtype}, expected {expected}"
                )
            feeds[name] = array
        return feeds

    def _run(self, feeds: dict) -> list:
        try:
            return self.session.run(self.output_names, feeds)
        except InvalidArgument as error:
            raise _BadRequest(f"{self.model_name}: {error}") from error

    def _run_batched(self, all_feeds: list) -> list:
        """One onnxruntime call for several requests' feeds; one response per request."""
        sizes = [len(feeds[self.input_names[0]]) for feeds in all_feeds]
        joined = {
            name: np.concatenate([feeds[name] for feeds in all_feeds]) for name in self.input_names
        }
        results = self._run(joined)
        for name, result in zip(self.output_names, results, strict=True):
            if len(result) != sum(sizes):
                raise ValueError(f"{self.model_name}: output {name!r} lost the batch dimension")
        bounds = np.cumsum([0] + sizes)
        return [
            self._response([result[start:end] for result in results])
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def _response(self, results: list):
        outputs = [
            pb_utils.Tensor(name, np.ascontiguousarray(result, dtype=self.output_dtypes[name]))
            for name, result in zip(self.output_names, results, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _error_response(self, error: Exception):
        if isinstance(error, _BadRequest):
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(error), _code("INVALID_ARG"))
            )
        message = f"{self.model_name}: {type(error).__name__}: {error}"
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, _code("INTERNAL")))

    def finalize(self):
        self.session = None


class _BadRequest(Exception):
    """The request, not the model, is wrong: reported as INVALID_ARG."""


class _Cancelled(Exception):
    """The client cancelled the request before it ran."""


def _code(name: str):
    # TritonError codes arrived in python_backend 23.xx; older stubs take a message only.
    return getattr(pb_utils.TritonError, name, getattr(pb_utils.TritonError, "INTERNAL", None))
