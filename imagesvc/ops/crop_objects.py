"""``crop_objects``: crop to the detected objects, padded (imgproxy Pro crop_objects).

The box is that of every matching object (mode max_score_area) or of the best one (one_best,
one_best_centermost: area x confidence x weight, see `imagesvc.objects.placement`), scaled by
``padding`` around its centre and clipped to the image. No object found: no crop. Detection
unavailable: no crop, reported as a degradation (nothing is hidden by this op, so it does not
fail closed). The steps after it (a resize's fill and its gravity) work on the crop.

libvips call: ``extract_area``. The planner cannot know the crop before detection runs, so the
estimate is the uncropped image (an upper bound) with ``shape_known=False``: the engine plans
the remaining steps again from the actual crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.objects import placement
from imagesvc.ops.detection_regions import boxes_or_degrade
from imagesvc.options import (
    ClassWeights,
    ParseContext,
    check_range,
    parse_classes,
    parse_object_mode,
    parse_weights,
)
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.v1 import image_service_pb2 as pb

MAX_PADDING = 100.0


@dataclass(frozen=True, slots=True)
class CropObjectsOptions:
    padding: float = 1.0
    classes: frozenset[str] | None = None
    mode: str | None = None  # None: the settings' object gravity mode
    weights: ClassWeights = ClassWeights()


def parse(msg: pb.CropObjects, path: str, pctx: ParseContext) -> CropObjectsOptions:
    padding = msg.padding or 1.0
    check_range(pctx, f"{path}.padding", padding, 1.0, MAX_PADDING)
    return CropObjectsOptions(
        padding,
        parse_classes(msg.classes, f"{path}.classes", pctx),
        parse_object_mode(msg.mode, f"{path}.mode", pctx),
        parse_weights(msg.weights, f"{path}.weights", pctx),
    )


def needs_detections(opts: CropObjectsOptions) -> bool:
    return True


def run(image: pyvips.Image, opts: CropObjectsOptions, ctx: StepContext) -> pyvips.Image:
    found = boxes_or_degrade(image, opts.classes, ctx, "crop_objects")
    if not found:
        return image
    objects = placement.weighted(
        [(obj.class_name, obj.confidence, box) for obj, box in found],
        opts.weights,
        ctx.class_weights,
    )
    mode = opts.mode or ctx.settings.object_gravity_mode
    left, top, width, height = placement.crop_box(
        image.width, image.height, objects, mode, opts.padding
    )
    if (width, height) == (image.width, image.height):
        return image
    ctx.map(Affine.translate(-left, -top))
    return image.extract_area(left, top, width, height)


def estimate(shape: Shape, opts: CropObjectsOptions, env: PlanEnv) -> OpEstimate:
    # At most the whole image: an upper bound until detection has run.
    return OpEstimate(shape, costs.copy_s(shape), shape_known=False)
