"""``crop``: cut a width x height window placed by gravity (imgproxy's crop, applied where it
appears in the pipeline). libvips calls: ``extract_area`` (and ``smartcrop`` for smart gravity)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.ops import gravity as gravity_mod
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.options import CENTER, Gravity, ObjectGravity, ParseContext, parse_gravity
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class CropOptions:
    width: float = 0.0  # >= 1 pixels, 0 < w < 1 fraction, 0 whole side
    height: float = 0.0
    gravity: Gravity = CENTER


def parse(msg: pb.Crop, path: str, pctx: ParseContext) -> CropOptions:
    for name in ("width", "height"):
        value = getattr(msg, name)
        if value < 0 or value > pctx.settings.max_result_dimension:
            pctx.violations.add(
                f"{path}.{name}", f"must be within [0, {pctx.settings.max_result_dimension}]"
            )
    return CropOptions(msg.width, msg.height, parse_gravity(msg.gravity, f"{path}.gravity", pctx))


def needs_detections(opts: CropOptions) -> bool:
    return isinstance(opts.gravity, ObjectGravity)


def detection_classes(opts: CropOptions) -> frozenset[str] | None:
    return opts.gravity.classes if isinstance(opts.gravity, ObjectGravity) else None


def crop_size(side: int, requested: float) -> int:
    if requested <= 0:
        return side
    if requested < 1:
        return max(1, round(side * requested))
    return min(side, int(requested))


def run(image: pyvips.Image, opts: CropOptions, ctx: StepContext) -> pyvips.Image:
    crop_w, crop_h = crop_size(image.width, opts.width), crop_size(image.height, opts.height)
    if (crop_w, crop_h) == (image.width, image.height):
        return image
    image, left, top = gravity_mod.crop_position(image, crop_w, crop_h, opts.gravity, ctx, "crop")
    ctx.map(Affine.translate(-left, -top))
    return image.extract_area(left, top, crop_w, crop_h)


def estimate(shape: Shape, opts: CropOptions, env: PlanEnv) -> OpEstimate:
    crop_w, crop_h = crop_size(shape.width, opts.width), crop_size(shape.height, opts.height)
    if (crop_w, crop_h) == (shape.width, shape.height):
        return OpEstimate(shape, 0.0)
    result = shape.sized(crop_w, crop_h)
    placing, random_access = gravity_mod.placement_cost(shape, opts.gravity)
    return OpEstimate(result, placing + costs.copy_s(result), random_access=random_access)
