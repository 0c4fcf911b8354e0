"""``pixelate_detections``: pixelate the boxes of detected objects. An imagesvc extension:
imgproxy has only whole-image pixelate (Cloudinary's analogue is e_pixelate_faces). When
detection is unavailable it fails the request, pixelates the whole image or skips, as
``on_detection_unavailable`` says."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops import pixelate
from imagesvc.ops.detection_regions import OnDetectionUnavailable, obscure_detections, parse_policy
from imagesvc.ops.pixelate import MAX_SIZE, mosaic
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.options import ParseContext, check_range, parse_classes
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class PixelateDetectionsOptions:
    size: int
    classes: frozenset[str] | None
    on_unavailable: OnDetectionUnavailable = OnDetectionUnavailable.FAIL


def parse(msg: pb.PixelateDetections, path: str, pctx: ParseContext) -> PixelateDetectionsOptions:
    check_range(pctx, f"{path}.size", msg.size, 2, MAX_SIZE)
    return PixelateDetectionsOptions(
        msg.size,
        parse_classes(msg.classes, f"{path}.classes", pctx),
        parse_policy(msg.on_detection_unavailable, f"{path}.on_detection_unavailable", pctx),
    )


def needs_detections(opts: PixelateDetectionsOptions) -> bool:
    return True


def run(image: pyvips.Image, opts: PixelateDetectionsOptions, ctx: StepContext) -> pyvips.Image:
    return obscure_detections(
        image,
        opts.classes,
        opts.on_unavailable,
        ctx,
        "pixelate_detections",
        lambda region: mosaic(region, opts.size),
        "pixelated",
    )


def estimate(shape: Shape, opts: PixelateDetectionsOptions, env: PlanEnv) -> OpEstimate:
    """Planned as if the whole image were pixelated: the boxes are not known yet, and obscuring
    the whole image is one of the policies when detection is unavailable."""
    whole = pixelate.estimate(shape, pixelate.PixelateOptions(opts.size), env)
    return OpEstimate(shape, whole.work_s + costs.copy_s(shape), random_access=True)
