"""``blur_detections``: gaussian-blur the boxes of detected objects (imgproxy Pro
blur_detections), e.g. to anonymise faces."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.blur import MAX_SIGMA, gaussian
from imagesvc.ops.detection_regions import boxes_or_degrade, rewrite_regions
from imagesvc.options import ParseContext, check_range, parse_classes
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class BlurDetectionsOptions:
    sigma: float
    classes: frozenset[str] | None


def parse(msg: pb.BlurDetections, path: str, pctx: ParseContext) -> BlurDetectionsOptions:
    check_range(pctx, f"{path}.sigma", msg.sigma, 0, MAX_SIGMA, low_open=True)
    return BlurDetectionsOptions(msg.sigma, parse_classes(msg.classes, f"{path}.classes", pctx))


def needs_detections(opts: BlurDetectionsOptions) -> bool:
    return True


def run(image: pyvips.Image, opts: BlurDetectionsOptions, ctx: StepContext) -> pyvips.Image:
    found = boxes_or_degrade(image, opts.classes, ctx, "blur_detections")
    if not found:
        return image
    image = ctx.random_access(image)
    return rewrite_regions(image, [box for _, box in found], lambda r: gaussian(r, opts.sigma))
