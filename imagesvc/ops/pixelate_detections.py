"""``pixelate_detections``: pixelate the boxes of detected objects. An imagesvc extension:
imgproxy has only whole-image pixelate (Cloudinary's analogue is e_pixelate_faces)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.detection_regions import boxes_or_degrade, rewrite_regions
from imagesvc.ops.pixelate import MAX_SIZE, mosaic
from imagesvc.options import ParseContext, check_range, parse_classes
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class PixelateDetectionsOptions:
    size: int
    classes: frozenset[str] | None


def parse(msg: pb.PixelateDetections, path: str, pctx: ParseContext) -> PixelateDetectionsOptions:
    check_range(pctx, f"{path}.size", msg.size, 2, MAX_SIZE)
    return PixelateDetectionsOptions(msg.size, parse_classes(msg.classes, f"{path}.classes", pctx))


def needs_detections(opts: PixelateDetectionsOptions) -> bool:
    return True


def run(image: pyvips.Image, opts: PixelateDetectionsOptions, ctx: StepContext) -> pyvips.Image:
    found = boxes_or_degrade(image, opts.classes, ctx, "pixelate_detections")
    if not found:
        return image
    image = ctx.random_access(image)
    return rewrite_regions(image, [box for _, box in found], lambda r: mosaic(r, opts.size))
