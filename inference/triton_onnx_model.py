"""Generic Triton python-backend model that runs ``model.onnx`` with onnxruntime.

The local Triton (from ``nvidia-pytriton``) has no onnxruntime backend, so
`inference.sidecar` turns every ``backend: "onnxruntime"`` model of ``model_repository/``
into a ``backend: "python"`` model whose version folder holds this file, as ``model.py``,
next to the unchanged ``model.onnx``. The model's config keeps its inputs and outputs, so
clients see the same contract as from stock Triton's onnxruntime backend.

Contract
--------
- Input and output names and dtypes come from the model config; the ONNX graph must have
  exactly those inputs and at least those outputs, else `initialize` fails and Triton
  marks the model unavailable.
- Config ``parameters`` honoured, with the onnxruntime backend's keys:
  ``intra_op_thread_count`` (default 1: the sidecar shares a small CPU budget with
  libvips) and ``inter_op_thread_count`` (default 1).
- `execute` returns exactly one response per request; failures are per-request
  ``TritonError`` responses (``INVALID_ARG`` for bad inputs, ``INTERNAL`` otherwise).

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


class TritonPythonModel:
    """Runs the version folder's ``model.onnx`` for the inputs and outputs of the config."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
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
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        if graph_inputs != set(self.input_names):
            raise ValueError(
                f"{self.model_name}: config inputs {self.input_names} "
                f"!= ONNX inputs {sorted(graph_inputs)}"
            )
        missing = set(self.output_names) - graph_outputs
        if missing:
            raise ValueError(
                f"{self.model_name}: config outputs {sorted(missing)} "
                f"are not ONNX outputs {sorted(graph_outputs)}"
            )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._infer(request))
            except _BadRequest as error:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(str(error), _code("INVALID_ARG"))
                    )
                )
            except Exception as error:  # reported on this request, not raised
                message = f"{self.model_name}: {type(error).__name__}: {error}"
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(message, _code("INTERNAL"))
                    )
                )
        return responses

    def _infer(self, request):
        if getattr(request, "is_cancelled", None) is not None and request.is_cancelled():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("request cancelled", _code("CANCELLED"))
            )
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
        try:
            results = self.session.run(self.output_names, feeds)
        except InvalidArgument as error:
            raise _BadRequest(f"{self.model_name}: {error}") from error
        outputs = [
            pb_utils.Tensor(name, np.ascontiguousarray(result, dtype=self.output_dtypes[name]))
            for name, result in zip(self.output_names, results, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def finalize(self):
        self.session = None


class _BadRequest(Exception):
    """The request, not the model, is wrong: reported as INVALID_ARG."""


def _code(name: str):
    # TritonError codes arrived in python_backend 23.xx; older stubs take a message only.
    return getattr(pb_utils.TritonError, name, getattr(pb_utils.TritonError, "INTERNAL", None))
