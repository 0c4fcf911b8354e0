"""Shared by the segmentation operations (blur_background, draw_segmentation): the regions at
the current image's size, the policy when segmentation is unavailable, and its messages."""

from __future__ import annotations

import enum

import numpy as np
import pyvips

from imagesvc.context import StepContext
from imagesvc.errors import SegmentationUnavailable
from imagesvc.options import ParseContext
from imagesvc.v1 import image_service_pb2 as pb

SEGMENTATION_UNAVAILABLE = "SEGMENTATION_UNAVAILABLE"
# ``StepContext.regions_failure`` when IMAGESVC_SEGMENTATION_MODEL is empty.
NOT_CONFIGURED = "SEGMENTATION_NOT_CONFIGURED"
# Face detections seed the skin model: what a segmentation step asks the detector for.
SEED_CLASSES = frozenset({"face"})


class OnSegmentationUnavailable(enum.Enum):
    SKIP = "skip"
    FAIL = "fail"


POLICY_BY_ENUM = {
    pb.SEGMENTATION_UNAVAILABLE_POLICY_UNSPECIFIED: OnSegmentationUnavailable.SKIP,
    pb.SEGMENTATION_UNAVAILABLE_POLICY_SKIP: OnSegmentationUnavailable.SKIP,
    pb.SEGMENTATION_UNAVAILABLE_POLICY_FAIL: OnSegmentationUnavailable.FAIL,
}


def parse_policy(value: int, path: str, pctx: ParseContext) -> OnSegmentationUnavailable:
    """``on_segmentation_unavailable``: unspecified means SKIP; an unknown number is a
    violation."""
    policy = POLICY_BY_ENUM.get(value)
    if policy is None:
        pctx.violations.add(path, f"unknown SegmentationUnavailablePolicy {value}")
        return OnSegmentationUnavailable.SKIP
    return policy


def failure_text(failure: str) -> str:
    """Why there are no regions, in words: "segmentation is not configured (...)" or
    "segmentation unavailable (<reason>)"."""
    if failure == NOT_CONFIGURED:
        return "segmentation is not configured (IMAGESVC_SEGMENTATION_MODEL is empty)"
    return f"segmentation unavailable ({failure})"


def regions_at(
    image: pyvips.Image,
    ctx: StepContext,
    operation: str,
    policy: OnSegmentationUnavailable = OnSegmentationUnavailable.SKIP,
    skipped: str = "operation skipped",
) -> tuple[np.ndarray, np.ndarray] | None:
    """(person, skin) float32 arrays at ``image``'s size; None when segmentation was
    unavailable and ``policy`` is SKIP (recorded as a degradation); raises
    SegmentationUnavailable when it is FAIL."""
    if ctx.regions is None:
        failure = ctx.regions_failure or NOT_CONFIGURED
        if policy is OnSegmentationUnavailable.FAIL:
            raise SegmentationUnavailable(
                f"{failure_text(failure)}; {operation} fails rather than return the image "
                "unchanged (on_segmentation_unavailable: FAIL)",
                metadata={"operation": operation, "segmentation_failure": failure},
                retry_after_s=ctx.settings.triton_retry_after_s,
            )
        ctx.degrade(SEGMENTATION_UNAVAILABLE, operation, f"{failure_text(failure)}, {skipped}")
        return None
    return ctx.regions.at(ctx.transform, image.width, image.height)
