"""``pixelate``: blocky mosaic of the whole image (shrink by the block size, then zoom back).

Like imgproxy, the image is padded to a multiple of the block so edge blocks are full size,
then cropped back; a size of 1 is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb

MAX_SIZE = 1024


@dataclass(frozen=True, slots=True)
class PixelateOptions:
    size: int


def parse(msg: pb.Pixelate, path: str, pctx: ParseContext) -> PixelateOptions:
    check_range(pctx, f"{path}.size", msg.size, 2, MAX_SIZE)
    return PixelateOptions(msg.size)


def mosaic(image: pyvips.Image, size: int) -> pyvips.Image:
    if size <= 1:
        return image
    width, height = image.width, image.height
    size = min(size, max(width, height))
    padded_w, padded_h = -(-width // size) * size, -(-height // size) * size
    if (padded_w, padded_h) != (width, height):
        image = image.embed(0, 0, padded_w, padded_h, extend="copy")
    blocks = image.shrink(size, size).cast(image.format)
    return blocks.zoom(size, size).extract_area(0, 0, width, height)


def run(image: pyvips.Image, opts: PixelateOptions, ctx: StepContext) -> pyvips.Image:
    return mosaic(image, opts.size)


def estimate(shape: Shape, opts: PixelateOptions, env: PlanEnv) -> OpEstimate:
    size = min(opts.size, max(shape.width, shape.height))
    # Shrink by box averaging, then zoom back: two passes over every pixel.
    return OpEstimate(shape, 2 * costs.copy_s(shape), window=size)
