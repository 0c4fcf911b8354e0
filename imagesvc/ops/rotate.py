"""``rotate``: turn clockwise by a multiple of 90 degrees (libvips ``rot``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.options import ParseContext
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb

_VIPS_ANGLE = {90: "d90", 180: "d180", 270: "d270"}


@dataclass(frozen=True, slots=True)
class RotateOptions:
    angle: int  # 0, 90, 180 or 270


def parse(msg: pb.Rotate, path: str, pctx: ParseContext) -> RotateOptions:
    if msg.angle % 90:
        pctx.violations.add(f"{path}.angle", "must be a multiple of 90")
    return RotateOptions(msg.angle % 360)


def run(image: pyvips.Image, opts: RotateOptions, ctx: StepContext) -> pyvips.Image:
    if opts.angle == 0:
        return image
    # rot reads the image out of order; sequential loads need a memory copy first.
    image = ctx.random_access(image)
    ctx.map(Affine.rotate_clockwise(opts.angle, image.width, image.height))
    return image.rot(_VIPS_ANGLE[opts.angle])


def estimate(shape: Shape, opts: RotateOptions, env: PlanEnv) -> OpEstimate:
    if opts.angle == 0:
        return OpEstimate(shape, 0.0)
    turned = shape.turned() if opts.angle in (90, 270) else shape
    return OpEstimate(turned, costs.copy_s(shape), random_access=True)
