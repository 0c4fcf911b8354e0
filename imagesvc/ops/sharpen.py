"""``sharpen``: unsharp mask on lightness (libvips ``sharpen``, which works in LabS)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb

MAX_SIGMA = 20.0


@dataclass(frozen=True, slots=True)
class SharpenOptions:
    sigma: float


def parse(msg: pb.Sharpen, path: str, pctx: ParseContext) -> SharpenOptions:
    check_range(pctx, f"{path}.sigma", msg.sigma, 0, MAX_SIGMA, low_open=True)
    return SharpenOptions(msg.sigma)


def run(image: pyvips.Image, opts: SharpenOptions, ctx: StepContext) -> pyvips.Image:
    interpretation = image.interpretation
    sharpened = image.sharpen(sigma=opts.sigma)
    # sharpen returns LabS-derived sRGB or 16-bit; bring it back to the input's encoding.
    if sharpened.interpretation != interpretation:
        sharpened = sharpened.colourspace(interpretation)
    return sharpened.cast(image.format)


def estimate(shape: Shape, opts: SharpenOptions, env: PlanEnv) -> OpEstimate:
    # libvips' sharpen blurs the lightness band only, with a mask of about the same width.
    taps = costs.gaussian_taps(opts.sigma)
    lightness = shape.with_bands(1)
    work = costs.convolution_s(lightness, taps) + shape.pixels * costs.SHARPEN_NS * costs.NS
    return OpEstimate(shape, work * costs.sample_factor(shape.sample_bytes), window=taps)
