"""``draw_segmentation``: tint the regions segmentation found (debugging, like
draw_detections): skin orange, clothes blue, the background as it is. When segmentation is
unavailable the image is returned as it is, degraded (SEGMENTATION_UNAVAILABLE)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.segmentation_regions import SEED_CLASSES, regions_at
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.regions.masks import CLOTHES, SKIN, labels
from imagesvc.v1 import image_service_pb2 as pb

SKIN_TINT = (255, 140, 0)
CLOTHES_TINT = (0, 90, 255)
DEFAULT_OPACITY = 0.5


@dataclass(frozen=True, slots=True)
class DrawSegmentationOptions:
    opacity: float = DEFAULT_OPACITY


def parse(msg: pb.DrawSegmentation, path: str, pctx: ParseContext) -> DrawSegmentationOptions:
    check_range(pctx, f"{path}.opacity", msg.opacity, 0, 1)
    opacity = msg.opacity if 0 < msg.opacity <= 1 else DEFAULT_OPACITY
    return DrawSegmentationOptions(opacity)


def needs_detections(opts: DrawSegmentationOptions) -> bool:
    return True


def needs_regions(opts: DrawSegmentationOptions) -> bool:
    return True


def detection_classes(opts: DrawSegmentationOptions) -> frozenset[str]:
    return SEED_CLASSES


def run(image: pyvips.Image, opts: DrawSegmentationOptions, ctx: StepContext) -> pyvips.Image:
    found = regions_at(image, ctx, "draw_segmentation", skipped="nothing was drawn")
    if found is None:
        return image
    classes = labels(*found)
    return tint(image, classes, opts.opacity)


def tint(image: pyvips.Image, classes: np.ndarray, opacity: float) -> pyvips.Image:
    """``image`` with SKIN pixels blended towards SKIN_TINT and CLOTHES towards CLOTHES_TINT
    by ``opacity``; a grey image becomes colour; alpha kept as it is."""
    alpha = None
    colour = image
    if image.hasalpha():
        colour, alpha = image.extract_band(0, n=image.bands - 1), image[image.bands - 1]
    deep = colour.format == "ushort"
    if colour.bands < 3:
        colour = colour.colourspace("rgb16" if deep else "srgb")
    scale = 257.0 if deep else 1.0
    skin = pyvips.Image.new_from_array(
        np.ascontiguousarray((classes == SKIN).astype(np.float32) * opacity)
    )
    clothes = pyvips.Image.new_from_array(
        np.ascontiguousarray((classes == CLOTHES).astype(np.float32) * opacity)
    )
    weight = skin + clothes
    ink = skin * [c * scale for c in SKIN_TINT] + clothes * [c * scale for c in CLOTHES_TINT]
    blended = (colour.cast("float") * (1.0 - weight) + ink).cast(colour.format)
    if alpha is not None:
        blended = blended.bandjoin(alpha.cast(colour.format))
    return blended.copy(interpretation="rgb16" if deep else "srgb")


def estimate(shape: Shape, opts: DrawSegmentationOptions, env: PlanEnv) -> OpEstimate:
    bands = shape.bands + 2 if shape.bands < 3 else shape.bands  # grey becomes colour
    colour = Shape(shape.width, shape.height, bands, shape.sample_bytes)
    return OpEstimate(colour, 4 * costs.copy_s(colour))
