"""Install a YOLO ONNX model (exported without NMS) into the Triton model repository.

Usage::

    python -m inference.install_yolo --onnx yolov8n.onnx --name yolov8n --classes coco.txt
        [--net-size 416] [--repository model_repository] [--net-type yolov8]
        [--output NAME] [--max-batch-size 16] [--force]

writes, in Triton's layout (see ``model_repository/README.md``)::

    <repository>/<name>/1/model.onnx        the file, byte for byte
    <repository>/<name>/config.pbtxt        onnxruntime backend, KIND_CPU, no batcher
    <repository>/<name>/configs/gpu.pbtxt   the same contract, KIND_GPU (+ dynamic batching)
    <repository>/<name>/classes.txt         the classes file, as given

Tensor names and shapes come from the ONNX graph itself: it must have one FP32 input
``[batch, 3, S, S]`` and (or ``--output`` picks) one FP32 output. ``S`` is the graph's own size
when it is fixed (``--net-size`` must then agree) and ``--net-size`` (default 416) when the
graph's sides are dynamic. The graph is run once through onnxruntime on a blank input of that
size, so the config's output dims are the real ones (Triton's onnxruntime backend refuses a
config ``-1`` where the graph has a fixed size, and the dims pin the contract the service
checks).

Batching: when the graph's batch dimension is dynamic, and a run on a batch of two gives two
results, the configs declare ``max_batch_size`` (16 by default) with ``dims`` without the batch
dimension, as the BlazeFace models do. When the graph is fixed to a batch of one (Ultralytics'
default export, YOLOX's without ``--dynamic``), they declare ``max_batch_size: 0`` and ``dims``
with the leading 1: Triton then passes the tensor through unchanged, the client still sends
``[1, 3, S, S]`` (`inference.yolo.YoloModel.batched` is False, the spec dims are the same), and
the GPU config has no dynamic batcher (Triton allows none without a batch dimension).

``--net-type`` also checks the output against the layout of that YOLO family and the number
of classes (as the service does at start-up). The local sidecar (`inference.sidecar`) serves
the result unchanged: it rewrites both configs for its python backend, dims included.

Needs ``onnx`` and ``onnxruntime`` (the dev extra: ``make install``); the service does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from inference.classes_file import parse_classes_file
from inference.yolo import (
    CLASSES_FILENAME,
    DEFAULT_REPOSITORY,
    TritonContract,
    YoloConfigError,
    YoloModel,
)

DEFAULT_NET_SIZE = 416
DEFAULT_MAX_BATCH_SIZE = 16
MODEL_FILENAME = "model.onnx"
VERSION = "1"
# Triton model names are folder names; keep them to what every tool quotes without trouble.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class InstallError(Exception):
    """The model cannot be installed; the message says why."""


@dataclass(frozen=True, slots=True)
class GraphTensor:
    name: str
    elem_type: str  # onnx.TensorProto.DataType name, e.g. "FLOAT"
    shape: tuple[int | None, ...] | None  # None: a dynamic dimension; None overall: no shape


def graph_tensors(model) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The real inputs (initializers listed as inputs by old exporters left out) and the
    outputs of an ``onnx.ModelProto``."""
    from onnx import TensorProto

    def describe(value) -> GraphTensor:
        tensor_type = value.type.tensor_type
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor_type.shape.dim
            )
        return GraphTensor(value.name, TensorProto.DataType.Name(tensor_type.elem_type), shape)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


def _load(onnx_path: Path):
    try:
        import onnx
    except ImportError:
        raise InstallError("needs the onnx package (the dev extra: make install)") from None
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # a missing file, or not an ONNX protobuf
        raise InstallError(f"{onnx_path}: cannot load an ONNX model: {error}") from None
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise InstallError(
                f"{onnx_path}: weights in external data files are not supported; save the "
                "model as one file"
            )
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise InstallError(f"{onnx_path}: not a valid ONNX model: {error}") from None
    return model


def _pick_tensors(
    inputs: list[GraphTensor], outputs: list[GraphTensor], output_name: str | None, where: str
) -> tuple[GraphTensor, GraphTensor]:
    if len(inputs) != 1:
        raise InstallError(
            f"{where}: a YOLO model has one input, this one has {[i.name for i in inputs]}"
        )
    (image,) = inputs
    if image.elem_type != "FLOAT" or image.shape is None or len(image.shape) != 4:
        raise InstallError(
            f"{where}: input {image.name!r} is {image.elem_type} {image.shape}, expected FLOAT "
            "[batch, 3, S, S] (export in FP32, NCHW)"
        )
    if image.shape[1] not in (3, None):
        raise InstallError(
            f"{where}: input {image.name!r} {image.shape} is not NCHW with 3 channels"
        )
    if output_name is not None:
        chosen = [o for o in outputs if o.name == output_name]
        if not chosen:
            raise InstallError(
                f"{where}: no output {output_name!r}; outputs: {[o.name for o in outputs]}"
            )
    elif len(outputs) == 1:
        chosen = outputs
    else:
        listing = ", ".join(f"{o.name} {list(o.shape or ())}" for o in outputs)
        raise InstallError(
            f"{where}: {len(outputs)} outputs ({listing}); pick the detections with --output "
            "(and export without NMS: one output of rows or columns)"
        )
    (detections,) = chosen
    if detections.elem_type != "FLOAT":
        raise InstallError(
            f"{where}: output {detections.name!r} is {detections.elem_type}, expected FLOAT"
        )
    if detections.shape is None or len(detections.shape) != 3:
        # Triton checks the config's dims against the graph's declared rank.
        shape = "no declared shape" if detections.shape is None else f"shape {detections.shape}"
        raise InstallError(
            f"{where}: output {detections.name!r} has {shape}, expected [batch, rows, columns] "
            "(exported without NMS?)"
        )
    return image, detections


def _net_size(image: GraphTensor, requested: int | None, where: str) -> int:
    height, width = image.shape[2], image.shape[3]
    if height is not None and width is not None and height != width:
        raise InstallError(f"{where}: input {image.name!r} is {width}x{height}; only square inputs")
    fixed = height if height is not None else width
    if fixed is not None:
        if requested is not None and requested != fixed:
            raise InstallError(
                f"{where}: the graph's input is fixed at {fixed}x{fixed}, not --net-size "
                f"{requested}; install with --net-size {fixed} (and set "
                f"IMAGESVC_OBJECT_DETECTION_NET_SIZE={fixed}) or re-export at {requested}"
            )
        return fixed
    return DEFAULT_NET_SIZE if requested is None else requested


def _run_shapes(model_bytes: bytes, image: GraphTensor, output: GraphTensor, size: int) -> dict:
    """Output shapes of a blank input per batch size tried: {1: shape, 2: shape or None}."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        raise InstallError("needs the onnxruntime package (the dev extra: make install)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    shapes: dict[int, tuple[int, ...] | None] = {}
    batches = (1, 2) if image.shape[0] is None else (image.shape[0],)
    for batch in batches:
        blank = np.full((batch, 3, size, size), 0.5, dtype=np.float32)
        try:
            (result,) = session.run([output.name], {image.name: blank})
        except Exception as error:
            if batch == 1 or batch == image.shape[0]:
                raise InstallError(
                    f"the model does not run on a [{batch}, 3, {size}, {size}] input: {error}"
                ) from None
            shapes[batch] = None
            continue
        shapes[batch] = tuple(int(d) for d in result.shape)
    return shapes


def contract_for(
    image: GraphTensor, output: GraphTensor, size: int, shapes: dict
) -> TritonContract:
    """The Triton contract for the graph, from the shapes its outputs really have."""
    single = shapes.get(1)
    if single is None:  # the graph's batch is fixed at something other than 1
        raise InstallError(
            f"input {image.name!r} has a fixed batch of {image.shape[0]}; export with batch 1 or "
            "a dynamic batch"
        )
    if len(single) != 3 or single[0] != 1:
        raise InstallError(
            f"output {output.name!r} has shape {list(single)} for one image, expected "
            "[1, rows, columns] (exported without NMS?)"
        )
    pair = shapes.get(2)
    batched = (
        image.shape[0] is None
        and pair is not None
        and pair[0] == 2
        and pair[1:] == single[1:]
        and output.shape[0] is None
    )
    return TritonContract(image.name, (3, size, size), output.name, single[1:], batched)


def config_text(
    name: str,
    contract: TritonContract,
    *,
    max_batch_size: int,
    gpu: bool,
    source: str,
) -> str:
    """``config.pbtxt`` (``gpu`` False) or ``configs/gpu.pbtxt`` for the contract, written
    through Triton's ``ModelConfig`` proto."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, backend="onnxruntime")
    batch: list[int] = []
    if contract.batched:
        config.max_batch_size = max_batch_size
    else:
        batch = [1]
    config.input.add(
        name=contract.input_name, data_type=pb.TYPE_FP32, dims=batch + list(contract.input_dims)
    )
    config.output.add(
        name=contract.output_name,
        data_type=pb.TYPE_FP32,
        dims=batch + list(contract.output_dims),
    )
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=1)
    if gpu and contract.batched:
        config.dynamic_batching.max_queue_delay_microseconds = 0
    config.parameters["intra_op_thread_count"].string_value = "1"
    if gpu:
        placement = (
            "GPU config: Triton started with --model-config-name=gpu (k8s/overlays/prod) loads "
            "this instead of ../config.pbtxt. Same model file, same contract; only the placement "
            + ("and the batching differ." if contract.batched else "differs.")
        )
    else:
        placement = (
            "Default config (CPU). Stock Triton serves it with its onnxruntime backend; the local "
            "CPU sidecar (inference/sidecar.py) derives a python-backend twin of it."
        )
    batching = (
        f"The ONNX batch dimension is dynamic: dims exclude it, max_batch_size {max_batch_size}."
        if contract.batched
        else "The ONNX graph is fixed to a batch of 1: max_batch_size 0, dims include the 1."
    )
    header = [
        f"Written by `python -m inference.install_yolo` from {source}.",
        placement,
        batching,
        "One onnxruntime thread per inference: on a 2-core pod the sidecar must not starve "
        "libvips.",
    ]
    lines = []
    for paragraph in header:
        words, line = paragraph.split(), "#"
        for word in words:
            if len(line) + 1 + len(word) > 96:
                lines.append(line)
                line = "#"
            line += " " + word
        lines.append(line)
    return "\n".join(lines) + "\n" + text_format.MessageToString(config)


@dataclass(frozen=True, slots=True)
class Installed:
    path: Path
    contract: TritonContract
    net_size: int
    classes: int
    max_batch_size: int


def install(
    onnx_path: str | os.PathLike,
    name: str,
    classes_path: str | os.PathLike,
    *,
    net_size: int | None = None,
    repository: str | os.PathLike = DEFAULT_REPOSITORY,
    net_type: str | None = None,
    output: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    force: bool = False,
) -> Installed:
    """Install the model (module docstring); InstallError says what is wrong."""
    onnx_path, repository = Path(onnx_path), Path(repository)
    if not NAME_PATTERN.fullmatch(name):
        raise InstallError(f"model name {name!r}: use letters, digits, '_', '.' and '-'")
    if max_batch_size < 1:
        raise InstallError(f"--max-batch-size {max_batch_size} < 1")
    if net_size is not None and (net_size <= 0 or net_size % 32):
        raise InstallError(f"--net-size {net_size} is not a positive multiple of 32")
    if not repository.is_dir():
        raise InstallError(f"no model repository at {repository}")
    target = repository / name
    if target.exists() and not force:
        raise InstallError(f"{target} exists; pass --force to replace it")
    try:
        classes_text = Path(classes_path).read_text(encoding="utf-8")
        entries = parse_classes_file(classes_text, source=str(classes_path))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InstallError(f"classes file: {error}") from None
    if not entries:
        raise InstallError(f"{classes_path} lists no class")

    model = _load(onnx_path)
    inputs, outputs = graph_tensors(model)
    image, detections = _pick_tensors(inputs, outputs, output, str(onnx_path))
    size = _net_size(image, net_size, str(onnx_path))
    if size % 32:
        raise InstallError(f"{onnx_path}: net size {size} is not a multiple of 32")
    model_bytes = onnx_path.read_bytes()
    contract = contract_for(
        image, detections, size, _run_shapes(model_bytes, image, detections, size)
    )
    if net_type is not None:
        try:
            YoloModel(name, net_type, entries, contract, net_size=size)
        except YoloConfigError as error:
            raise InstallError(f"--net-type {net_type}: {error}") from None

    digest = hashlib.sha256(model_bytes).hexdigest()
    source = f"{onnx_path.name} (sha256 {digest})"
    staging = repository / f".{name}.install-{secrets.token_hex(4)}"
    try:
        (staging / VERSION).mkdir(parents=True)
        (staging / "configs").mkdir()
        (staging / VERSION / MODEL_FILENAME).write_bytes(model_bytes)
        for path, gpu in ((Path("config.pbtxt"), False), (Path("configs") / "gpu.pbtxt", True)):
            (staging / path).write_text(
                config_text(name, contract, max_batch_size=max_batch_size, gpu=gpu, source=source)
            )
        (staging / CLASSES_FILENAME).write_text(classes_text, encoding="utf-8")
        if target.exists():
            retired = repository / f".{name}.old-{secrets.token_hex(4)}"
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Installed(
        target,
        contract,
        size,
        len(entries),
        max_batch_size if contract.batched else 0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.install_yolo",
        description="Install a YOLO ONNX model (exported without NMS) into the Triton model "
        "repository, with its configs and classes file.",
    )
    parser.add_argument("--onnx", required=True, type=Path, help="the ONNX file")
    parser.add_argument(
        "--name", required=True, help="Triton model name (IMAGESVC_OBJECT_DETECTION_MODEL)"
    )
    parser.add_argument(
        "--classes",
        required=True,
        type=Path,
        help="classes file: one name per line, =weight optional",
    )
    parser.add_argument(
        "--net-size",
        type=int,
        default=None,
        help="square input size; default: the graph's own, or 416 for a graph with dynamic sides",
    )
    parser.add_argument("--repository", type=Path, default=Path(DEFAULT_REPOSITORY))
    parser.add_argument(
        "--net-type", default=None, help="also check the output against this layout (yolov8, ...)"
    )
    parser.add_argument(
        "--output", default=None, help="the output to use, if the graph has several"
    )
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument(
        "--force", action="store_true", help="replace an installed model of that name"
    )
    args = parser.parse_args(argv)
    try:
        installed = install(
            args.onnx,
            args.name,
            args.classes,
            net_size=args.net_size,
            repository=args.repository,
            net_type=args.net_type,
            output=args.output,
            max_batch_size=args.max_batch_size,
            force=args.force,
        )
    except InstallError as error:
        print(f"install_yolo: {error}", file=sys.stderr)
        return 2
    contract = installed.contract
    print(
        f"installed {args.name} in {installed.path}: input {contract.input_name} "
        f"{list(contract.input_dims)}, output {contract.output_name} {list(contract.output_dims)}, "
        f"max_batch_size {installed.max_batch_size}, {installed.classes} classes\n"
        f"set IMAGESVC_OBJECT_DETECTION_MODEL={args.name} "
        f"IMAGESVC_OBJECT_DETECTION_NET_SIZE={installed.net_size} "
        f"IMAGESVC_OBJECT_DETECTION_NET_TYPE={args.net_type or '<its family>'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
