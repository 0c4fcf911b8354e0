"""``background``: flatten the alpha channel onto a solid colour (libvips ``flatten``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class BackgroundOptions:
    rgb: tuple[int, int, int]


def parse(msg: pb.Background, path: str, pctx: ParseContext) -> BackgroundOptions:
    for name in ("red", "green", "blue"):
        check_range(pctx, f"{path}.color.{name}", getattr(msg.color, name), 0, 255)
    return BackgroundOptions((msg.color.red, msg.color.green, msg.color.blue))


def flatten(image: pyvips.Image, rgb: tuple[int, int, int]) -> pyvips.Image:
    if not image.hasalpha():
        return image
    if image.bands <= 2:  # grey + alpha: flatten onto the colour's luminance
        background = [round(0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2])]
    else:
        background = list(rgb)
    if image.interpretation in ("rgb16", "grey16"):
        background = [value * 257 for value in background]
    return image.flatten(background=background).cast(image.format)


def run(image: pyvips.Image, opts: BackgroundOptions, ctx: StepContext) -> pyvips.Image:
    return flatten(image, opts.rgb)


def estimate(shape: Shape, opts: BackgroundOptions, env: PlanEnv) -> OpEstimate:
    if not shape.has_alpha:
        return OpEstimate(shape, 0.0)
    work = shape.pixels * costs.FLATTEN_NS * costs.NS * costs.sample_factor(shape.sample_bytes)
    return OpEstimate(shape.with_bands(shape.bands - 1), work)
