"""``blur``: gaussian blur of the whole image (libvips ``gaussblur``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.options import ParseContext, check_range
from imagesvc.v1 import image_service_pb2 as pb

MAX_SIGMA = 100.0  # beyond this the kernel is huge and the image is a flat colour anyway


@dataclass(frozen=True, slots=True)
class BlurOptions:
    sigma: float


def parse(msg: pb.Blur, path: str, pctx: ParseContext) -> BlurOptions:
    check_range(pctx, f"{path}.sigma", msg.sigma, 0, MAX_SIGMA, low_open=True)
    return BlurOptions(msg.sigma)


def gaussian(image: pyvips.Image, sigma: float) -> pyvips.Image:
    if image.hasalpha():
        band_format = image.format
        return image.premultiply().gaussblur(sigma).unpremultiply().cast(band_format)
    return image.gaussblur(sigma)


def run(image: pyvips.Image, opts: BlurOptions, ctx: StepContext) -> pyvips.Image:
    return gaussian(image, opts.sigma)
