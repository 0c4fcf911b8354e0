"""MediaPipe selfie segmentation (the person mask of issue 11): the model's contract and its
pre- and post-processing, plain numpy, no Triton.

The model (``model_repository/selfie_segmentation``, exported by
`inference.export_selfie_segmentation` from the ``mediapipe==0.10.14`` wheel) takes one NHWC
``input`` ``[batch, 256, 256, 3]`` of RGB in [0, 1] and returns ``mask`` ``[batch, 256, 256,
1]``, the probability that each pixel is a person (the sigmoid is inside the graph).

What MediaPipe's own graph does around it (``SelfieSegmentationCpu``, read from the wheel's
``selfie_segmentation_cpu.binarypb`` and checked against `SELFIE_SEGMENTATION` by the export):

- ``ImageToTensorCalculator``: the whole image, **stretched** to 256 x 256
  (``keep_aspect_ratio: false``, so no letterbox and no border), RGB mapped linearly onto
  ``output_tensor_float_range`` [0, 1];
- ``TensorsToSegmentationCalculator`` with ``activation: NONE``: the output tensor is already
  the probability, and it is resized (bilinear) to the input image's size.

`preprocess` and `postprocess` do the same. One deliberate difference: MediaPipe's CPU
converter samples the source with ``cv::warpPerspective`` (bilinear, no antialiasing), and
here the image is shrunk with `inference.ssd.resize_bilinear` (bilinear with a widened
triangle filter, as the detectors' letterbox does), which averages instead of aliasing when
a large photograph is shrunk to 256 pixels. Upscaling the mask back is plain bilinear with
pixel-centre alignment in both (``cv::resize`` ``INTER_LINEAR``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from inference.ssd import resize_bilinear


@dataclass(frozen=True, slots=True)
class SegmentationModel:
    """One segmentation model served by Triton: its name, tensors and input geometry."""

    name: str  # model_repository/<name>/
    input_name: str
    output_name: str
    input_width: int
    input_height: int
    input_range: tuple[float, float]
    # MediaPipe's ImageToTensorCalculator keep_aspect_ratio: False stretches the whole
    # image onto the input (no letterbox).
    keep_aspect_ratio: bool = False
    # Mask values at or above this are "person" (MediaPipe's samples use 0.5 too).
    threshold: float = 0.5

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``[1, H, W, 3]``: one image, as the client sends it."""
        return (1, self.input_height, self.input_width, 3)

    @property
    def inputs(self) -> Mapping[str, tuple[str, list[int]]]:
        """Tensor name -> (Triton datatype, dims without the batch), as in `inference.models`."""
        return {self.input_name: ("FP32", [self.input_height, self.input_width, 3])}

    @property
    def outputs(self) -> Mapping[str, tuple[str, list[int]]]:
        return {self.output_name: ("FP32", [self.input_height, self.input_width, 1])}


# MediaPipe's general selfie segmentation model (model_selection 0 of SelfieSegmentationCpu).
SELFIE_SEGMENTATION = SegmentationModel(
    name="selfie_segmentation",
    input_name="input",
    output_name="mask",
    input_width=256,
    input_height=256,
    input_range=(0.0, 1.0),
)


@dataclass(frozen=True, slots=True)
class MaskMapping:
    """How the model input covers the image: stretched, the input's ``[0, 1]`` square is the
    whole image (``image_width`` x ``image_height`` pixels), whatever its aspect ratio."""

    image_width: int
    image_height: int
    input_width: int
    input_height: int


def preprocess(
    rgb: np.ndarray, model: SegmentationModel = SELFIE_SEGMENTATION
) -> tuple[np.ndarray, MaskMapping]:
    """The model's ``input`` (``[1, H, W, 3]`` float32 in its input range) for an ``(H, W,
    3)`` uint8 RGB image, stretched as MediaPipe does, and the `MaskMapping` to undo it."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty image {rgb.shape}")
    if model.keep_aspect_ratio:
        raise ValueError(f"{model.name}: letterboxed segmentation is not implemented")
    low, high = model.input_range
    resized = resize_bilinear(rgb, model.input_width, model.input_height)
    tensor = resized * np.float32((high - low) / 255)
    if low:
        tensor += np.float32(low)
    mapping = MaskMapping(width, height, model.input_width, model.input_height)
    return tensor[None].astype(np.float32, copy=False), mapping


def postprocess(mask: np.ndarray, mapping: MaskMapping, out_w: int, out_h: int) -> np.ndarray:
    """The person probability, float32 ``(out_h, out_w)`` in [0, 1], of the image given to
    `preprocess`, at any output size (the service may want it at its output size rather
    than the source's): the model's ``mask`` (``[H, W]``, ``[H, W, 1]`` or ``[1, H, W, 1]``)
    resized bilinearly over the whole image, as the input was stretched."""
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 4:
        if mask.shape[0] != 1:
            raise ValueError(f"one image's mask expected, got {mask.shape}")
        mask = mask[0]
    if mask.ndim == 3:
        if mask.shape[2] != 1:
            raise ValueError(f"a one-channel mask expected, got {mask.shape}")
        mask = mask[..., 0]
    if mask.shape != (mapping.input_height, mapping.input_width):
        raise ValueError(
            f"mask {mask.shape} is not the model input's "
            f"{(mapping.input_height, mapping.input_width)}"
        )
    if out_w < 1 or out_h < 1:
        raise ValueError(f"bad output size {out_w}x{out_h}")
    if (out_h, out_w) == mask.shape:
        resized = mask.copy()
    else:
        resized = resize_bilinear(mask[..., None], out_w, out_h)[..., 0]
    return np.clip(resized, 0.0, 1.0, out=resized)
