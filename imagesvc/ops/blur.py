"""``blur``: gaussian blur of the whole image (libvips ``gaussblur``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
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
        # Premultiplied, so transparent pixels lend no colour to their neighbours. The
        # premultiplied samples are kept in the image's own integer format: libvips blurs those
        # with its vectorised integer convolution, 35x faster than in float at sigma 100 (0.5 s
        # against 19 s for 2000x1500 RGBA). The rounding costs at most 0.5 / alpha of a level.
        band_format = image.format
        premultiplied = image.premultiply().cast(band_format)
        return premultiplied.gaussblur(sigma).unpremultiply().cast(band_format)
    return image.gaussblur(sigma)


def run(image: pyvips.Image, opts: BlurOptions, ctx: StepContext) -> pyvips.Image:
    return gaussian(image, opts.sigma)


def estimate(shape: Shape, opts: BlurOptions, env: PlanEnv) -> OpEstimate:
    taps = costs.gaussian_taps(opts.sigma)
    return OpEstimate(shape, costs.convolution_s(shape, taps), window=taps)
