"""The contract between the detector client and one detection model served by Triton.

The client (`inference.client`) holds a set of models, asks only those serving the classes a
request needs, calls them in parallel (one Triton request each for an image; tiles of one
image may go together as a batch), and merges
their detections. A model family (BlazeFace, MediaPipe pose/palm, a YOLO brought by the user)
implements this protocol in its own module; its pre- and post-processing maths are plain
functions the tests import without Triton.

Optional: a model may have an ``nms_group`` attribute (a string; absent or None by default).
Models sharing one (the BlazeFace short/full pair) return from ``decode`` their candidates
before non-maximum suppression, unclipped, and the client runs one weighted NMS over the
group's union and clips (`inference.client.merge_detections`).

Optional: an ``input_side`` attribute (an int; absent or None by default), the long side in
pixels of the image the model looks at: ``prepare`` brings any image down to it, so a caller
that only needs this model's answer may hand it an image no larger (`inference.client.Detector.
input_side`), and a same-size image is only converted, not resampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from inference.detection import Detection

# Tensor name -> (Triton datatype, e.g. "FP32", per-item dims without the batch dimension; -1
# for a dimension the model decides).
TensorSpec = Mapping[str, tuple[str, list[int]]]


class DetectionModel(Protocol):
    @property
    def name(self) -> str:
        """The Triton model name (model_repository/<name>/)."""

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class name it can return (lower case)."""

    @property
    def class_weights(self) -> Mapping[str, float]:
        """Weights its classes file gives (classes without one are absent)."""

    @property
    def inputs(self) -> TensorSpec: ...

    @property
    def outputs(self) -> TensorSpec: ...

    def prepare(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        """Input tensors (batch dimension 1 in front) for an (H, W, 3) uint8 RGB image, and the
        state ``decode`` needs to map boxes back (e.g. the letterbox)."""

    def decode(
        self, outputs: Mapping[str, np.ndarray], state: Any, image_size: tuple[int, int]
    ) -> list[Detection]:
        """Detections in the pixels of the image given to ``prepare`` (width, height =
        ``image_size``), thresholds and the model's own non-maximum suppression applied, each
        with ``model`` set to ``name``."""
