"""``blur_detections``: gaussian-blur the boxes of detected objects (imgproxy Pro
blur_detections), e.g. to anonymise faces. When detection is unavailable it fails the request,
blurs the whole image or skips, as ``on_detection_unavailable`` says."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops import blur
from imagesvc.ops.blur import MAX_SIGMA, gaussian
from imagesvc.ops.detection_regions import OnDetectionUnavailable, obscure_detections, parse_policy
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.options import ParseContext, check_range, parse_classes
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class BlurDetectionsOptions:
    sigma: float
    classes: frozenset[str] | None
    on_unavailable: OnDetectionUnavailable = OnDetectionUnavailable.FAIL


def parse(msg: pb.BlurDetections, path: str, pctx: ParseContext) -> BlurDetectionsOptions:
    check_range(pctx, f"{path}.sigma", msg.sigma, 0, MAX_SIGMA, low_open=True)
    return BlurDetectionsOptions(
        msg.sigma,
        parse_classes(msg.classes, f"{path}.classes", pctx),
        parse_policy(msg.on_detection_unavailable, f"{path}.on_detection_unavailable", pctx),
    )


def needs_detections(opts: BlurDetectionsOptions) -> bool:
    return True


def run(image: pyvips.Image, opts: BlurDetectionsOptions, ctx: StepContext) -> pyvips.Image:
    return obscure_detections(
        image,
        opts.classes,
        opts.on_unavailable,
        ctx,
        "blur_detections",
        lambda region: gaussian(region, opts.sigma),
        "blurred",
    )


def estimate(shape: Shape, opts: BlurDetectionsOptions, env: PlanEnv) -> OpEstimate:
    """Planned as if the whole image were blurred: the boxes are not known yet, and obscuring
    the whole image is one of the policies when detection is unavailable."""
    whole = blur.estimate(shape, blur.BlurOptions(opts.sigma), env)
    return OpEstimate(shape, whole.work_s + costs.copy_s(shape), random_access=True)
