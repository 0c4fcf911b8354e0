"""``blur_background``: filter everything but the person (portrait-mode background blur, or a
cheaper background before encoding), blended in through a feathered mask
(`imagesvc.regions.prefilter`). The person comes from segmentation on Triton
(``StepContext.regions``); when that is unavailable the step leaves the image as it is
(degraded) or fails the request, as ``on_segmentation_unavailable`` says."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.blur import MAX_SIGMA
from imagesvc.ops.segmentation_regions import (
    SEED_CLASSES,
    OnSegmentationUnavailable,
    parse_policy,
    regions_at,
)
from imagesvc.options import ParseContext, check_range
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.regions.prefilter import (
    DEFOCUS_SIGMA_PER_SHRINK,
    defocused,
    feathered_keep,
    filtered,
)
from imagesvc.v1 import image_service_pb2 as pb

# sigma 0: this share of the long side of the image the step sees; ``defocus`` (no halo, so
# no feather as wide as its reach) blurs like a portrait lens.
AUTO_SIGMA_SHARE = 0.01
AUTO_DEFOCUS_SHARE = 0.04

METHOD_BY_ENUM = {
    pb.BACKGROUND_FILTER_UNSPECIFIED: "gaussian",
    pb.BACKGROUND_FILTER_GAUSSIAN: "gaussian",
    pb.BACKGROUND_FILTER_MEDIAN: "median",
    pb.BACKGROUND_FILTER_CHROMA: "chroma",
    pb.BACKGROUND_FILTER_DEFOCUS: "defocus",
}


@dataclass(frozen=True, slots=True)
class BlurBackgroundOptions:
    sigma: float  # 0: automatic (AUTO_SIGMA_SHARE of the long side)
    method: str = "gaussian"  # imagesvc.regions.prefilter.FILTERS
    on_unavailable: OnSegmentationUnavailable = OnSegmentationUnavailable.SKIP


def parse(msg: pb.BlurBackground, path: str, pctx: ParseContext) -> BlurBackgroundOptions:
    check_range(pctx, f"{path}.sigma", msg.sigma, 0, MAX_SIGMA)
    method = METHOD_BY_ENUM.get(msg.filter)
    if method is None:
        pctx.violations.add(f"{path}.filter", f"unknown BackgroundFilter {msg.filter}")
        method = "gaussian"
    policy = parse_policy(
        msg.on_segmentation_unavailable, f"{path}.on_segmentation_unavailable", pctx
    )
    sigma = msg.sigma if math.isfinite(msg.sigma) else 0.0
    return BlurBackgroundOptions(sigma, method, policy)


def needs_detections(opts: BlurBackgroundOptions) -> bool:
    return True


def needs_regions(opts: BlurBackgroundOptions) -> bool:
    return True


def detection_classes(opts: BlurBackgroundOptions) -> frozenset[str]:
    return SEED_CLASSES


def sigma_for(opts: BlurBackgroundOptions, width: int, height: int) -> float:
    if opts.sigma > 0:
        return opts.sigma
    share = AUTO_DEFOCUS_SHARE if opts.method == "defocus" else AUTO_SIGMA_SHARE
    return min(MAX_SIGMA, max(0.5, share * max(width, height)))


def margin_for(opts: BlurBackgroundOptions, sigma: float, width: int, height: int) -> float:
    """The feather: the blur's reach (2 sigma), so that no blurred person colour shows
    around the person; ``defocus`` leaves the person out of its blur, and its feather is the
    automatic Gaussian's, a soft edge only."""
    if opts.method == "defocus":
        sigma = min(sigma, max(0.5, AUTO_SIGMA_SHARE * max(width, height)))
    return 2 * sigma


def run(image: pyvips.Image, opts: BlurBackgroundOptions, ctx: StepContext) -> pyvips.Image:
    found = regions_at(
        image, ctx, "blur_background", opts.on_unavailable, "the background was not filtered"
    )
    if found is None:
        return image
    person, _ = found
    sigma = sigma_for(opts, image.width, image.height)
    margin = margin_for(opts, sigma, image.width, image.height)
    # The filter and the original are both read: one input, read at random.
    return background_filtered(ctx.random_access(image), person, opts.method, sigma, margin)


def background_filtered(
    image: pyvips.Image, person, method: str, sigma: float, margin: float
) -> pyvips.Image:
    """`imagesvc.regions.prefilter.prefilter` for every image a step may see: 8- or 16-bit,
    grey or colour, with or without alpha (kept as it is). No pixel of the person changes."""
    alpha = None
    colour = image
    if image.hasalpha():
        colour, alpha = image.extract_band(0, n=image.bands - 1), image[image.bands - 1]
    keep = feathered_keep(person, margin)
    if method == "defocus":
        smooth = defocused(colour, person, sigma)
    else:
        smooth = _filtered(colour, method, sigma)
    # Exact on the person: keep is 1.0 there, and 8- and 16-bit samples are exact in float.
    result = (colour.cast("float") * keep + smooth.cast("float") * (1.0 - keep)).cast(colour.format)
    if alpha is not None:
        result = result.bandjoin(alpha)
    return result.copy(interpretation=image.interpretation)


def _filtered(colour: pyvips.Image, method: str, sigma: float) -> pyvips.Image:
    if method != "chroma":
        return filtered(colour, method, sigma)
    if colour.bands < 3:
        return colour  # grey: no chroma to filter
    if colour.format == "uchar":
        return filtered(colour, method, sigma)
    space = colour.colourspace("lab")
    chroma = space.extract_band(1, n=2).gaussblur(2 * sigma)
    return space[0].bandjoin(chroma).colourspace(colour.interpretation).cast(colour.format)


def estimate(shape: Shape, opts: BlurBackgroundOptions, env: PlanEnv) -> OpEstimate:
    """Planned as a blur of the whole image (the person is only known once segmented) plus
    the mask's dilation and feathering and the blend."""
    sigma = sigma_for(opts, shape.width, shape.height)
    if opts.method == "defocus":
        # Two blurs (the weighted pixels and the weights) of a copy reduced by the shrink,
        # the reductions, the ratio, and the enlargement back.
        shrink = max(1.0, sigma / DEFOCUS_SIGMA_PER_SHRINK)
        small = shape.sized(
            max(1, round(shape.width / shrink)), max(1, round(shape.height / shrink))
        )
        taps = costs.gaussian_taps(sigma / shrink)
        # In float: counted as twice the 8-bit passes.
        work = 2 * 2 * costs.convolution_s(small, taps) + 4 * costs.copy_s(shape)
        taps = 3  # the enlargement's window, in rows of the step's input
    elif opts.method == "median":
        taps = 2 * max(1, int(round(sigma))) + 1
        work = costs.convolution_s(shape, taps * taps)
    else:
        taps = costs.gaussian_taps(2 * sigma if opts.method == "chroma" else sigma)
        work = costs.convolution_s(shape, taps)
        if opts.method == "chroma":
            work += 2 * costs.SHARPEN_NS * shape.pixels * costs.NS  # to Lab and back
    reach = margin_for(opts, sigma, shape.width, shape.height) / 2
    mask_taps = costs.gaussian_taps(reach) + 2 * (2 * int(round(2 * reach)) + 1)
    mask = Shape(shape.width, shape.height, 1, 1)
    work += costs.convolution_s(mask, mask_taps) + 3 * costs.copy_s(shape)
    return OpEstimate(shape, work, window=taps, random_access=True)
