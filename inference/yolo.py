"""A YOLO model brought by the user, as imgproxy Pro's object detection takes one.

The model is an ONNX file of the YOLO family exported **without NMS** (imgproxy's rule: the
service letterboxes, decodes, thresholds and suppresses). ``python -m inference.install_yolo``
puts it into the Triton model repository; `model_from_settings` reads the
``IMAGESVC_OBJECT_DETECTION_*`` settings, the classes file and the model's ``config.pbtxt``, and
returns a `YoloModel` implementing `inference.models.DetectionModel`.

Supported layouts (``IMAGESVC_OBJECT_DETECTION_NET_TYPE``): one FP32 input ``[batch, 3, S, S]``
(NCHW, ``S`` the net size) and one FP32 output; ``C`` is the number of classes in the classes
file, box coordinates are pixels of the net input, ``N`` and ``K`` are whatever the model has.

- ``yolov5``, ``yolov7``: ``[N, 5 + C]`` rows ``cx cy w h``, objectness, ``C`` class scores;
  score = objectness x class score (YOLOv7 exported with ``--grid``, without NMS).
- ``yolov6``: ``[N, 5 + C]`` as yolov5 (YOLOv6 3.x writes an objectness of 1), or ``[N, 4 + C]``
  without the objectness column; told apart by the width and ``C``.
- ``yolov8``, ``yolov9``, ``yolov11``: ``[4 + C, N]``, transposed: column ``i`` is
  ``cx cy w h`` and ``C`` class scores, no objectness (Ultralytics' ``output0``).
- ``yolov10``: ``[K, 6]`` end-to-end rows ``x1 y1 x2 y2 score class`` (``K`` = 300 by default).
- ``yolox``: ``[N, 5 + C]`` from the raw YOLOX head (``tools/export_onnx.py`` without
  ``--decode_in_inference``, as YOLOX's published ONNX files): ``dx dy`` offsets in grid cells
  and ``log w, log h`` in strides, decoded here over the stride 8, 16, 32 grids (8 to 64 for P6
  models, chosen by ``N``), each row-major, as YOLOX's ``demo_postprocess``; then objectness and
  class scores as yolov5. A model exported *with* ``--decode_in_inference`` would be decoded
  twice: re-export it without.

Class and objectness scores are taken as they are (every exporter above applies the sigmoid
in the graph). Each candidate keeps its best class (as Ultralytics and YOLOX do); candidates
with a score below the confidence threshold are dropped, then non-maximum suppression runs per
class (a box is dropped when its IoU with a better box of the same class is above the NMS
threshold; yolov10 output, NMS-free by design, goes through the same step, which leaves a
well-behaved model's boxes alone). Boxes are mapped back through the letterbox to the image's
pixels and clipped.

Pre-processing: ``yolox`` as YOLOX's ``preproc``: resized to fit (``int(side x r)``), placed at
the top-left of an ``S x S`` canvas of grey 114, values 0..255; every other net type as
Ultralytics' ``LetterBox``: resized to fit (rounded), centred on grey 114, values in [0, 1].
Channels are RGB; ``swap_rb`` sends BGR instead (YOLOX's published weights are trained on
OpenCV's BGR images: set it for them). Resizing is `inference.blazeface.resize_bilinear`
(antialiased bilinear) rather than OpenCV's ``INTER_LINEAR``.

Every function below is plain numpy; the tests run them on outputs of tiny ONNX models in each
layout without Triton.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inference.blazeface import clip_boxes, iou, resize_bilinear
from inference.classes_file import ClassEntry, parse_classes_file
from inference.detection import Detection
from inference.errors import InferenceError

PAD_VALUE = 114.0  # Ultralytics' and YOLOX's letterbox grey
CLASSES_FILENAME = "classes.txt"  # <repository>/<model>/classes.txt, written by install_yolo
DEFAULT_REPOSITORY = "model_repository"  # relative to the working directory (/app in the image)
SETTINGS_PREFIX = "IMAGESVC_OBJECT_DETECTION_"
YOLOX_STRIDES = (8, 16, 32)
YOLOX_P6_STRIDES = (8, 16, 32, 64)
# The net size must divide by the largest stride of every supported family.
NET_SIZE_MULTIPLE = 32


@dataclass(frozen=True, slots=True)
class NetType:
    """How one YOLO family lays out its output and wants its input."""

    name: str
    # rows: [N, 4|5 + C]; columns: [4 + C, N]; end_to_end: [K, 6] (x1 y1 x2 y2 score class)
    layout: Literal["rows", "columns", "end_to_end"]
    # rows only: True: an objectness column; None: either (told apart by the width and C)
    objectness: bool | None = True
    grid: bool = False  # YOLOX: raw offsets decoded over the stride grids
    centred: bool = True  # Ultralytics letterbox (centred) vs YOLOX (top-left)
    pixel_scale: float = 1.0 / 255.0  # input values: pixel x scale


NET_TYPES: Mapping[str, NetType] = {
    "yolox": NetType("yolox", "rows", grid=True, centred=False, pixel_scale=1.0),
    "yolov5": NetType("yolov5", "rows"),
    "yolov6": NetType("yolov6", "rows", objectness=None),
    "yolov7": NetType("yolov7", "rows"),
    "yolov8": NetType("yolov8", "columns", objectness=False),
    "yolov9": NetType("yolov9", "columns", objectness=False),
    "yolov10": NetType("yolov10", "end_to_end", objectness=False),
    "yolov11": NetType("yolov11", "columns", objectness=False),
}

# imgproxy Pro accepts these too; their ONNX exports have two outputs (boxes and scores apart).
UNSUPPORTED_NET_TYPES = {
    "yolov4": "its ONNX exports have two outputs (boxes, scores); not supported",
    "yolo-nas": "its ONNX exports have two outputs (boxes, scores); not supported",
}


class YoloConfigError(ValueError):
    """A YOLO model cannot be set up. ``settings`` names the settings (suffixes of
    ``IMAGESVC_OBJECT_DETECTION_``) the problem is about; `model_from_settings` puts their
    names in front of the message."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


def resolve_net_type(name: str) -> NetType:
    """The `NetType` called ``name`` (case-insensitive); YoloConfigError if unknown."""
    key = name.strip().lower()
    if key in NET_TYPES:
        return NET_TYPES[key]
    if key in UNSUPPORTED_NET_TYPES:
        raise YoloConfigError(f"net type {name!r}: {UNSUPPORTED_NET_TYPES[key]}", "NET_TYPE")
    raise YoloConfigError(
        f"unknown net type {name!r}; supported: {', '.join(NET_TYPES)}", "NET_TYPE"
    )


# -- pre-processing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the image landed in the square net input: resized to ``resized_width`` x
    ``resized_height`` and placed ``pad_x``/``pad_y`` pixels from the canvas's top-left.
    Coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``)."""

    net_size: int
    image_width: int
    image_height: int
    resized_width: int
    resized_height: int
    pad_x: int
    pad_y: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` ``x1 y1 x2 y2`` boxes in net-input pixels to image pixels (unclipped)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) * (self.image_width / self.resized_width)
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) * (self.image_height / self.resized_height)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of `to_image`."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * (self.resized_width / self.image_width) + self.pad_x
        out[:, 1::2] = boxes[:, 1::2] * (self.resized_height / self.image_height) + self.pad_y
        return out


def placement(width: int, height: int, net_size: int, *, centred: bool) -> Placement:
    """Where a ``width`` x ``height`` image goes in the net input.

    Both families scale by ``r = min(S / height, S / width)`` (up or down). Ultralytics rounds
    the resized size and centres it (its ``round(d - 0.1)`` puts the odd pixel of padding on the
    right/bottom, i.e. ``pad = (S - size) // 2``); YOLOX truncates it and keeps it top-left.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image {width}x{height}")
    r = min(net_size / height, net_size / width)
    if centred:
        new_w, new_h = round(width * r), round(height * r)
    else:  # int() as YOLOX, with a hair of slack so 3 * (416 / 3) is 416, not 415
        new_w, new_h = int(width * r + 1e-6), int(height * r + 1e-6)
    new_w = min(net_size, max(1, new_w))
    new_h = min(net_size, max(1, new_h))
    pad_x = (net_size - new_w) // 2 if centred else 0
    pad_y = (net_size - new_h) // 2 if centred else 0
    return Placement(net_size, width, height, new_w, new_h, pad_x, pad_y)


def letterbox(rgb: np.ndarray, net_size: int, *, centred: bool) -> tuple[np.ndarray, Placement]:
    """An ``(H, W, 3)`` uint8 image fitted into an ``(S, S, 3)`` float32 canvas of grey 114,
    values 0..255, channels as given, and the `Placement` to map boxes back."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    where = placement(width, height, net_size, centred=centred)
    canvas = np.full((net_size, net_size, 3), PAD_VALUE, dtype=np.float32)
    resized = resize_bilinear(rgb, where.resized_width, where.resized_height)
    canvas[
        where.pad_y : where.pad_y + where.resized_height,
        where.pad_x : where.pad_x + where.resized_width,
    ] = np.clip(resized, 0, 255)
    return canvas, where


def to_nchw(canvas: np.ndarray, *, pixel_scale: float, swap_rb: bool) -> np.ndarray:
    """``(S, S, 3)`` canvas (RGB, 0..255) to the ``(1, 3, S, S)`` float32 net input:
    multiplied by ``pixel_scale`` (1/255 for [0, 1]), BGR when ``swap_rb``."""
    channels = canvas[:, :, ::-1] if swap_rb else canvas
    tensor = np.ascontiguousarray(channels.transpose(2, 0, 1)[None], dtype=np.float32)
    if pixel_scale != 1.0:
        tensor *= np.float32(pixel_scale)
    return tensor


# -- post-processing -------------------------------------------------------------------------


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` centre-size boxes to corner boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def yolox_strides(net_size: int, rows: int) -> tuple[int, ...]:
    """The YOLOX strides whose grids over an ``S x S`` input have ``rows`` cells in all:
    (8, 16, 32), or (8, 16, 32, 64) for P6 models. ValueError if neither fits."""
    for strides in (YOLOX_STRIDES, YOLOX_P6_STRIDES):
        if sum((net_size // s) ** 2 for s in strides) == rows:
            return strides
    expected = " or ".join(
        str(sum((net_size // s) ** 2 for s in strides))
        for strides in (YOLOX_STRIDES, YOLOX_P6_STRIDES)
    )
    raise ValueError(
        f"a YOLOX output for net size {net_size} has {expected} rows (stride 8-32 or 8-64 "
        f"grids), this one has {rows}"
    )


def yolox_grid(net_size: int, strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices ``(N, 2)`` (x, y) and strides ``(N, 1)`` of the YOLOX head's rows: for each
    stride, its ``(S // s) x (S // s)`` grid row by row (YOLOX's ``demo_postprocess``)."""
    cells, per_row = [], []
    for stride in strides:
        size = net_size // stride
        ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        per_row.append(np.full((size * size, 1), stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(per_row).astype(np.float64)


def decode_yolox_boxes(raw: np.ndarray, net_size: int) -> np.ndarray:
    """Raw YOLOX box columns ``(N, 4)`` (dx, dy, log w, log h) to ``cx cy w h`` pixels."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    cells, strides = yolox_grid(net_size, yolox_strides(net_size, len(raw)))
    centre = (raw[:, 0:2] + cells) * strides
    with np.errstate(over="ignore"):
        size = np.exp(raw[:, 2:4]) * strides
    return np.concatenate([centre, size], axis=1)


def candidates(
    output: np.ndarray,
    kind: NetType,
    num_classes: int,
    net_size: int,
    confidence_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output (without the batch dimension) to the boxes scoring at least
    ``confidence_threshold``: ``(K, 4)`` ``x1 y1 x2 y2`` in net-input pixels, ``(K,)`` scores
    and ``(K,)`` int class indices. Each box keeps its best class. Rows with a non-finite
    value, an empty box or (yolov10) a class index outside the classes are dropped.
    ValueError for an output whose shape does not fit the layout."""
    out = np.asarray(output, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{kind.name}: expected a 2-d output per image, got {out.shape}")
    if kind.layout == "end_to_end":
        if out.shape[1] != 6:
            raise ValueError(f"{kind.name}: expected [K, 6] rows, got {list(out.shape)}")
        boxes, scores = out[:, 0:4], out[:, 4]
        classes = np.rint(np.nan_to_num(out[:, 5], nan=-1.0)).astype(np.int64)
        valid = (classes >= 0) & (classes < num_classes)
    else:
        rows = out.T if kind.layout == "columns" else out
        width = rows.shape[1]
        if width == 5 + num_classes and kind.objectness is not False:
            objectness, class_scores = rows[:, 4], rows[:, 5:]
        elif width == 4 + num_classes and kind.objectness is not True:
            objectness, class_scores = None, rows[:, 4:]
        else:
            raise ValueError(
                f"{kind.name}: {_expected_width(kind, num_classes)} for {num_classes} classes, "
                f"got {list(out.shape)}"
            )
        boxes = rows[:, 0:4]
        if kind.grid:
            boxes = decode_yolox_boxes(boxes, net_size)
        boxes = cxcywh_to_xyxy(boxes)
        if num_classes:
            classes = np.argmax(class_scores, axis=1)
            scores = class_scores[np.arange(len(rows)), classes]
        else:
            classes = np.zeros(len(rows), dtype=np.int64)
            scores = np.zeros(len(rows))
        if objectness is not None:
            scores = scores * objectness
        valid = np.ones(len(rows), dtype=bool)
    with np.errstate(invalid="ignore"):
        valid &= np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        valid &= scores >= confidence_threshold
        valid &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[valid], scores[valid], classes[valid].astype(np.int64)


def _expected_width(kind: NetType, num_classes: int) -> str:
    axis = "rows [N, {}]" if kind.layout == "rows" else "columns [{}, N]"
    if kind.objectness is None:
        widths = f"{5 + num_classes} or {4 + num_classes}"
    else:
        widths = str((5 if kind.objectness else 4) + num_classes)
    return "expected " + axis.format(widths)


def nms_per_class(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy non-maximum suppression within each class: indices of the kept boxes, best
    score first. A box is dropped when its IoU with a kept box of its class is above
    ``iou_threshold``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for label in np.unique(classes):
        remaining = order[classes[order] == label]
        while len(remaining):
            best = remaining[0]
            kept.append(int(best))
            rest = remaining[1:]
            remaining = rest[iou(boxes[best], boxes[rest]) <= iou_threshold]
    kept_array = np.asarray(kept, dtype=np.int64)
    return kept_array[np.argsort(-scores[kept_array], kind="stable")]


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TritonContract:
    """The tensors of a model as its Triton config declares them. Dims are per image (without
    the batch dimension), as `inference.models.TensorSpec` has them. ``batched``: the config
    has ``max_batch_size > 0`` (the ONNX batch dimension is dynamic; Triton adds it, ``-1``
    in the metadata); False: ``max_batch_size: 0`` and the config ``dims`` (and the
    metadata's shapes) are ``[1, *dims]``: the ONNX graph is fixed to a batch of one."""

    input_name: str
    input_dims: tuple[int, ...]
    output_name: str
    output_dims: tuple[int, ...]
    batched: bool = True


def read_contract(config_text: str, *, source: str = "config.pbtxt") -> TritonContract:
    """The `TritonContract` of a Triton model config with one FP32 input and one FP32 output
    (``python -m inference.install_yolo`` writes such configs). ValueError naming ``source``."""
    from google.protobuf import text_format
    from google.protobuf.text_format import ParseError
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    except ParseError as error:
        raise ValueError(f"{source}: not a Triton model config: {error}") from None
    if len(config.input) != 1 or len(config.output) != 1:
        raise ValueError(
            f"{source}: a YOLO model has one input and one output, the config declares "
            f"{len(config.input)} and {len(config.output)}"
        )
    batched = config.max_batch_size > 0
    tensors = []
    for tensor in (config.input[0], config.output[0]):
        dtype = model_config_pb2.DataType.Name(tensor.data_type)
        if dtype != "TYPE_FP32":
            raise ValueError(f"{source}: tensor {tensor.name!r} is {dtype}, expected TYPE_FP32")
        dims = tuple(int(d) for d in tensor.dims)
        if not batched:
            if not dims or dims[0] != 1:
                raise ValueError(
                    f"{source}: max_batch_size 0 needs dims with a batch of 1 in front, tensor "
                    f"{tensor.name!r} has {list(dims)}"
                )
            dims = dims[1:]
        tensors.append((tensor.name, dims))
    (input_name, input_dims), (output_name, output_dims) = tensors
    return TritonContract(input_name, input_dims, output_name, output_dims, batched)


def _entries(classes: Sequence[ClassEntry | str]) -> tuple[ClassEntry, ...]:
    entries = tuple(
        entry if isinstance(entry, ClassEntry) else ClassEntry(str(entry).strip().lower(), None)
        for entry in classes
    )
    names = [entry.name for entry in entries]
    if not names:
        raise YoloConfigError("the classes file lists no class", "CLASSES")
    if len(set(names)) != len(names) or not all(names):
        raise YoloConfigError("class names must be unique and not empty", "CLASSES")
    return entries


class YoloModel:
    """A YOLO-family ONNX model served by Triton, as an `inference.models.DetectionModel`.

    Parameters
    ----------
    name
        The Triton model name (``<repository>/<name>/``).
    net_type
        One of `NET_TYPES` (``yolox``, ``yolov5`` ... ``yolov11``); the module docstring
        lists each layout.
    classes
        The classes in output order: `ClassEntry` items (from `parse_classes_file`, with
        their weights) or plain names.
    contract
        The tensors as the model's Triton config declares them (`read_contract`). The output's
        fixed dims are checked against the net type and the number of classes here.
    net_size
        The square input size ``S``; a multiple of 32. The config's input dims must be
        ``[3, S, S]`` (``-1`` accepted for a dynamic side).
    confidence_threshold
        Minimum score of a detection (objectness x class score where there is objectness).
    nms_threshold
        IoU above which the lower-scoring box of the same class is suppressed.
    swap_rb
        Send BGR instead of RGB (models trained on OpenCV's BGR images, e.g. YOLOX's own).

    Raises `YoloConfigError` (a ValueError) when the pieces do not fit together.
    """

    def __init__(
        self,
        name: str,
        net_type: str,
        classes: Sequence[ClassEntry | str],
        contract: TritonContract,
        *,
        net_size: int = 416,
        confidence_threshold: float = 0.2,
        nms_threshold: float = 0.4,
        swap_rb: bool = False,
    ) -> None:
        if not name:
            raise YoloConfigError("no model name", "MODEL")
        self._name = name
        self.kind = resolve_net_type(net_type)
        self._entries = _entries(classes)
        if not isinstance(net_size, int) or net_size <= 0 or net_size % NET_SIZE_MULTIPLE:
            raise YoloConfigError(
                f"net size {net_size!r} is not a positive multiple of {NET_SIZE_MULTIPLE}",
                "NET_SIZE",
            )
        for setting, value in (
            ("CONFIDENCE_THRESHOLD", confidence_threshold),
            ("NMS_THRESHOLD", nms_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise YoloConfigError(f"{value!r} is not in [0, 1]", setting)
        self.net_size = net_size
        self.confidence_threshold = float(confidence_threshold)
        self.nms_threshold = float(nms_threshold)
        self.swap_rb = bool(swap_rb)
        self.contract = contract
        self._check_contract()

    def _check_contract(self) -> None:
        contract, size = self.contract, self.net_size
        dims = contract.input_dims
        if len(dims) != 3 or dims[0] not in (3, -1):
            raise YoloConfigError(
                f"model {self.name!r}: input {contract.input_name!r} has dims {list(dims)}, "
                f"expected NCHW [3, {size}, {size}]",
                "MODEL",
            )
        if any(side not in (size, -1) for side in dims[1:]):
            raise YoloConfigError(
                f"model {self.name!r} takes {dims[1]}x{dims[2]} inputs, the net size is {size}",
                "NET_SIZE",
            )
        out = contract.output_dims
        count = len(self._entries)
        if len(out) != 2:
            raise YoloConfigError(
                f"model {self.name!r}: output {contract.output_name!r} has dims {list(out)}, "
                f"a {self.kind.name} output is 2-d per image",
                "MODEL",
                "NET_TYPE",
            )
        kind = self.kind
        if kind.layout == "end_to_end":
            width_ok = out[1] in (6, -1)
            expected = "rows [K, 6]"
        else:
            width = out[0] if kind.layout == "columns" else out[1]
            if kind.objectness is None:
                widths = {4 + count, 5 + count}
            else:
                widths = {(5 if kind.objectness else 4) + count}
            width_ok = width == -1 or width in widths
            expected = _expected_width(kind, count).removeprefix("expected ")
        if not width_ok:
            raise YoloConfigError(
                f"model {self.name!r}: output {contract.output_name!r} has dims {list(out)}; "
                f"a {kind.name} output for the {count} classes of the classes file has "
                f"{expected} (wrong net type, or a classes file that does not match the model?)",
                "NET_TYPE",
                "CLASSES",
            )
        if kind.grid and out[0] != -1:
            try:
                yolox_strides(size, out[0])
            except ValueError as error:
                raise YoloConfigError(
                    f"model {self.name!r}: {error}", "NET_TYPE", "NET_SIZE"
                ) from None

    # -- DetectionModel -----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self._entries)

    @property
    def class_weights(self) -> Mapping[str, float]:
        return {e.name: e.weight for e in self._entries if e.weight is not None}

    @property
    def input_side(self) -> int:
        return self.net_size

    @property
    def inputs(self) -> dict[str, tuple[str, list[int]]]:
        return {self.contract.input_name: ("FP32", list(self.contract.input_dims))}

    @property
    def outputs(self) -> dict[str, tuple[str, list[int]]]:
        return {self.contract.output_name: ("FP32", list(self.contract.output_dims))}

    @property
    def batched(self) -> bool:
        """False for a model whose ONNX batch is fixed at 1 (config ``max_batch_size: 0``,
        dims ``[1, *spec]``); the tensors of `prepare` fit both kinds unchanged."""
        return self.contract.batched

    def prepare(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Placement]:
        canvas, where = letterbox(rgb, self.net_size, centred=self.kind.centred)
        tensor = to_nchw(canvas, pixel_scale=self.kind.pixel_scale, swap_rb=self.swap_rb)
        return {self.contract.input_name: tensor}, where

    def decode(
        self, outputs: Mapping[str, np.ndarray], state: Any, image_size: tuple[int, int]
    ) -> list[Detection]:
        """Detections, best first. Raises `InferenceError` ``TRITON_BAD_RESPONSE`` for a
        missing output or one whose shape does not fit the contract."""
        output = outputs.get(self.contract.output_name)
        if output is None:
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{self.name}: no output {self.contract.output_name!r}"
            )
        output = np.asarray(output)
        if output.ndim == 3 and output.shape[0] == 1:
            output = output[0]
        expected = self.contract.output_dims
        if output.ndim != len(expected) or any(
            e != -1 and e != got for e, got in zip(expected, output.shape, strict=True)
        ):
            raise InferenceError(
                "TRITON_BAD_RESPONSE",
                f"{self.name}: output shape {list(np.shape(outputs[self.contract.output_name]))}, "
                f"expected [1, {', '.join(map(str, expected))}]",
            )
        try:
            boxes, scores, classes = candidates(
                output, self.kind, len(self._entries), self.net_size, self.confidence_threshold
            )
        except ValueError as error:
            raise InferenceError("TRITON_BAD_RESPONSE", f"{self.name}: {error}") from error
        keep = nms_per_class(boxes, scores, classes, self.nms_threshold)
        width, height = image_size
        mapped = clip_boxes(state.to_image(boxes[keep]), width, height)
        names = self.classes
        detections = []
        for (left, top, right, bottom), score, label in zip(
            mapped, scores[keep], classes[keep], strict=True
        ):
            if right > left and bottom > top:
                detections.append(
                    Detection(
                        names[label],
                        float(min(max(score, 0.0), 1.0)),
                        float(left),
                        float(top),
                        float(right - left),
                        float(bottom - top),
                        model=self.name,
                    )
                )
        return detections

    def __repr__(self) -> str:
        return (
            f"YoloModel({self.name!r}, {self.kind.name!r}, {len(self._entries)} classes, "
            f"net_size={self.net_size})"
        )


# -- from the settings -----------------------------------------------------------------------


def _setting_names(settings: Sequence[str]) -> str:
    return " / ".join(SETTINGS_PREFIX + name for name in settings)


def model_from_settings(
    settings: Any, *, repository: str | os.PathLike = DEFAULT_REPOSITORY
) -> YoloModel | None:
    """The `YoloModel` the ``IMAGESVC_OBJECT_DETECTION_*`` settings describe, or None when
    ``IMAGESVC_OBJECT_DETECTION_MODEL`` is empty.

    Reads the classes file (``IMAGESVC_OBJECT_DETECTION_CLASSES``, default
    ``<repository>/<model>/classes.txt``) and ``<repository>/<model>/config.pbtxt`` (the
    tensors Triton will serve), and checks that net type, net size, classes and the model's
    output fit together. Raises `YoloConfigError` whose message starts with the names of the
    settings to look at. ``repository`` is relative to the working directory (``/app`` in the
    service image, the repository root in development).
    """
    name = (settings.object_detection_model or "").strip()
    if not name:
        return None
    try:
        return _model_from_settings(settings, name, Path(repository))
    except YoloConfigError as error:
        raise YoloConfigError(
            f"{_setting_names(error.settings)}: {error}", *error.settings
        ) from None


def _model_from_settings(settings: Any, name: str, repository: Path) -> YoloModel:
    kind = resolve_net_type(settings.object_detection_net_type)
    model_dir = repository / name
    if not model_dir.is_dir():
        raise YoloConfigError(
            f"no model {name!r} in {repository}; install the ONNX model with `python -m "
            f"inference.install_yolo --onnx MODEL.onnx --name {name} --classes FILE`",
            "MODEL",
        )
    classes_path = Path(settings.object_detection_classes or model_dir / CLASSES_FILENAME)
    try:
        classes_text = classes_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise YoloConfigError(f"cannot read the classes file: {error}", "CLASSES") from None
    try:
        entries = parse_classes_file(classes_text, source=str(classes_path))
    except ValueError as error:
        raise YoloConfigError(str(error), "CLASSES") from None
    if not entries:
        raise YoloConfigError(f"{classes_path} lists no class", "CLASSES")
    config_path = model_dir / "config.pbtxt"
    try:
        config_text = config_path.read_text(encoding="utf-8")
    except OSError as error:
        raise YoloConfigError(
            f"no Triton config for model {name!r} ({error}); install the ONNX model with "
            f"`python -m inference.install_yolo --onnx MODEL.onnx --name {name} --classes FILE`",
            "MODEL",
        ) from None
    try:
        contract = read_contract(config_text, source=str(config_path))
    except ValueError as error:
        raise YoloConfigError(str(error), "MODEL") from None
    return YoloModel(
        name,
        kind.name,
        entries,
        contract,
        net_size=settings.object_detection_net_size,
        confidence_threshold=settings.object_detection_confidence_threshold,
        nms_threshold=settings.object_detection_nms_threshold,
        swap_rb=settings.object_detection_swap_rb,
    )
