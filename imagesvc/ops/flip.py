"""``flip``: mirror horizontally and/or vertically (libvips ``flip``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.options import ParseContext
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class FlipOptions:
    horizontal: bool
    vertical: bool


def parse(msg: pb.Flip, path: str, pctx: ParseContext) -> FlipOptions:
    return FlipOptions(msg.horizontal, msg.vertical)


def run(image: pyvips.Image, opts: FlipOptions, ctx: StepContext) -> pyvips.Image:
    if not (opts.horizontal or opts.vertical):
        return image
    if opts.vertical:
        # A vertical flip reads lines bottom-up, which sequential loads cannot do.
        image = ctx.random_access(image)
    ctx.map(Affine.flip(opts.horizontal, opts.vertical, image.width, image.height))
    if opts.horizontal:
        image = image.flip("horizontal")
    if opts.vertical:
        image = image.flip("vertical")
    return image


def estimate(shape: Shape, opts: FlipOptions, env: PlanEnv) -> OpEstimate:
    if not (opts.horizontal or opts.vertical):
        return OpEstimate(shape, 0.0)
    passes = int(opts.horizontal) + int(opts.vertical)
    return OpEstimate(shape, passes * costs.copy_s(shape), random_access=opts.vertical)
