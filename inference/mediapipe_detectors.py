"""MediaPipe's SSD detectors as `inference.models.DetectionModel`s: BlazeFace (``face``), pose
detection (``person``) and palm detection (``hand``).

All of them share one decoder (`inference.ssd`); what differs is in a `DetectorSpec`: the SSD
head (`SsdSpec`), and for pose and palm the region MediaPipe's own pipeline derives from a
detection before it runs its landmark model (`RoiSpec`), which is the box returned here:

- ``face`` (BlazeFace short and full range): the detected box, brow to chin, as MediaPipe's
  face detection returns it.
- ``person`` (pose detection): the detector's box is the *face*; what covers the body is the
  region ``PoseDetectionToRoi`` derives from two keypoints: a square centred on the mid-hip
  whose half-side is the distance to the point that encodes the body's size and rotation,
  scaled by 1.25, turned so that the body is upright. Returned: the axis-aligned bounds of that
  rotated square, clipped to the image. It covers the whole body with a margin, even where
  only the upper body is in the picture (it then reaches below the image and is clipped).
- ``hand`` (palm detection): the detector's box is the *palm*; ``PalmDetectionDetectionToRoi``
  turns the palm box wrist-up (wrist centre to the middle finger's knuckle), shifts it half
  its height towards the fingers, squares it on its long side and scales it by 2.6, which
  covers the whole hand. Returned: the axis-aligned bounds of that rotated square, clipped.

Thresholds: MediaPipe's own per model (``min_score_thresh`` of its graphs, 0.5 for pose and
palm; BlazeFace takes the service's ``detection_score_threshold``), and its weighted NMS with
IoU 0.3, applied per model before the region is derived, as MediaPipe does. MediaPipe's
pipelines then keep one person (pose) or two hands (hand tracking); here every detection above
the threshold is returned. `inference.export_mediapipe_detectors` checks every number of these
specs against the graphs compiled into the ``mediapipe==0.10.14`` wheel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.blazeface import (
    CLASSIFICATORS_NAME,
    FULL_RANGE,
    INPUT_NAME,
    REGRESSORS_NAME,
    SHORT_RANGE,
)
from inference.classes_file import parse_classes_file
from inference.detection import Detection
from inference.models import TensorSpec
from inference.ssd import (
    Letterbox,
    RoiSpec,
    SsdSpec,
    clip_boxes,
    decode_ssd,
    generate_anchors,
    letterbox,
    roi_rects,
    rotated_rect_bounds,
    weighted_nms_with_keypoints,
)

CLASSES_FILE = "classes.txt"

POSE_DETECTION = SsdSpec(
    name="pose_detection",
    input_size=224,
    strides=(8, 16, 32, 32, 32),
    interpolated_scale_aspect_ratio=1.0,
    mediapipe_min_score=0.5,
    # 0: mid-hip centre, 1: full-body size and rotation, 2: mid-shoulder centre,
    # 3: upper-body size and rotation.
    num_keypoints=4,
    input_range=(-1.0, 1.0),
)
PALM_DETECTION = SsdSpec(
    name="palm_detection",
    input_size=192,
    strides=(8, 16, 16, 16),
    interpolated_scale_aspect_ratio=1.0,
    mediapipe_min_score=0.5,
    # 0: wrist centre, 2: the middle finger's knuckle (MCP); the others: other knuckles, thumb.
    num_keypoints=7,
    input_range=(0.0, 1.0),
)
# mediapipe/modules/pose_landmark/pose_detection_to_roi.pbtxt
POSE_ROI = RoiSpec(
    from_keypoints=True,
    start_keypoint=0,
    end_keypoint=1,
    target_angle_degrees=90.0,
    scale_x=1.25,
    scale_y=1.25,
    square_long=True,
)
# mediapipe/modules/hand_landmark/palm_detection_detection_to_roi.pbtxt
PALM_ROI = RoiSpec(
    from_keypoints=False,
    start_keypoint=0,
    end_keypoint=2,
    target_angle_degrees=90.0,
    scale_x=2.6,
    scale_y=2.6,
    shift_y=-0.5,
    square_long=True,
)


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One MediaPipe detector family: its head, the region it returns (None: the detected box
    itself) and the class its shipped ``classes.txt`` names."""

    ssd: SsdSpec
    roi: RoiSpec | None
    default_classes: tuple[str, ...]

    @property
    def classes_file(self) -> str:
        """The ``classes.txt`` the export writes (format: `inference.classes_file`)."""
        return "".join(f"{name}\n" for name in self.default_classes)


# Triton model name (model_repository/<name>/) -> its spec.
SPECS: Mapping[str, DetectorSpec] = {
    "blazeface_short_range": DetectorSpec(SHORT_RANGE, None, ("face",)),
    "blazeface_full_range": DetectorSpec(FULL_RANGE, None, ("face",)),
    "pose_detection": DetectorSpec(POSE_DETECTION, POSE_ROI, ("person",)),
    "palm_detection_full": DetectorSpec(PALM_DETECTION, PALM_ROI, ("hand",)),
}


def read_classes(repository: Path, name: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """Class names and weights from ``<repository>/<name>/classes.txt``."""
    path = Path(repository) / name / CLASSES_FILE
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{name}: cannot read its classes file {path}: {error}") from error
    entries = parse_classes_file(text, source=str(path))
    weights = {e.name: e.weight for e in entries if e.weight is not None}
    return tuple(e.name for e in entries), weights


class MediaPipeDetector:
    """One MediaPipe SSD detector served by Triton as ``name`` (a `DetectionModel`).

    ``classes``: one name (these heads score one class); ``class_weights``: as the classes
    file gives them. ``score_threshold`` and ``nms_threshold`` default to MediaPipe's for the
    model (`SsdSpec.mediapipe_min_score`, `SsdSpec.mediapipe_nms_iou`).

    ``nms_group``: models that share one (the BlazeFace pair: ``"blazeface"``) leave the
    non-maximum suppression to the client, which runs one weighted NMS over the union of the
    group's detections (`inference.client.merge_detections`), as MediaPipe-based face
    detection always merged both ranges. ``decode`` then returns every detection above the
    threshold, in image pixels, not yet clipped (the client clips after the merge).
    """

    def __init__(
        self,
        name: str,
        spec: DetectorSpec,
        *,
        classes: Sequence[str],
        class_weights: Mapping[str, float] | None = None,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        nms_group: str | None = None,
    ) -> None:
        if len(classes) != 1:
            raise ValueError(f"{name}: a MediaPipe SSD head scores one class, got {classes!r}")
        self._name = name
        self.spec = spec
        self._classes = tuple(classes)
        self._class_weights = dict(class_weights or {})
        ssd = spec.ssd
        self.score_threshold = (
            ssd.mediapipe_min_score if score_threshold is None else score_threshold
        )
        self.nms_threshold = ssd.mediapipe_nms_iou if nms_threshold is None else nms_threshold
        self.anchors = generate_anchors(ssd)
        self.nms_group = nms_group

    @classmethod
    def from_repository(
        cls,
        name: str,
        repository: Path,
        *,
        spec: DetectorSpec | None = None,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        nms_group: str | None = None,
    ) -> MediaPipeDetector:
        """The model ``name`` of `SPECS` (or ``spec``), classes from its classes file."""
        if spec is None:
            if name not in SPECS:
                raise ValueError(f"{name}: not a MediaPipe detector (known: {sorted(SPECS)})")
            spec = SPECS[name]
        classes, weights = read_classes(repository, name)
        return cls(
            name,
            spec,
            classes=classes,
            class_weights=weights,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            nms_group=nms_group,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def class_weights(self) -> Mapping[str, float]:
        return self._class_weights

    @property
    def input_side(self) -> int:
        return self.spec.ssd.input_size

    @property
    def inputs(self) -> TensorSpec:
        return {INPUT_NAME: (self.spec.ssd.input_dtype, list(self.spec.ssd.input_shape[1:]))}

    @property
    def outputs(self) -> TensorSpec:
        count = len(self.anchors)
        return {
            REGRESSORS_NAME: ("FP32", [count, self.spec.ssd.num_coords]),
            CLASSIFICATORS_NAME: ("FP32", [count, 1]),
        }

    def prepare(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Letterbox]:
        ssd = self.spec.ssd
        tensor, box = letterbox(rgb, ssd.input_size, ssd.input_range, ssd.input_dtype)
        return {INPUT_NAME: tensor}, box

    def decode(
        self, outputs: Mapping[str, np.ndarray], state: Any, image_size: tuple[int, int]
    ) -> list[Detection]:
        box: Letterbox = state
        boxes, keypoints, scores = decode_ssd(
            outputs[REGRESSORS_NAME],
            outputs[CLASSIFICATORS_NAME],
            self.spec.ssd,
            self.score_threshold,
            self.anchors,
        )
        boxes, keypoints = box.to_image(boxes), box.points_to_image(keypoints)
        if self.nms_group is None:
            boxes, keypoints, scores = weighted_nms_with_keypoints(
                boxes, keypoints, scores, self.nms_threshold
            )
        if self.spec.roi is not None:
            boxes = rotated_rect_bounds(roi_rects(boxes, keypoints, self.spec.roi))
        if self.nms_group is None:
            boxes = clip_boxes(boxes, *image_size)
        detections = []
        for (left, top, right, bottom), score in zip(boxes, scores, strict=True):
            if right > left and bottom > top:
                detections.append(
                    Detection(
                        self._classes[0],
                        float(score),
                        float(left),
                        float(top),
                        float(right - left),
                        float(bottom - top),
                        model=self._name,
                    )
                )
        return detections
