"""Shared by the three detection operations: find the boxes to touch, report when detection was
unavailable, and rewrite image regions in place of the originals.

The anonymising operations (blur_detections, pixelate_detections) also share their policy for
when detection is unavailable (``on_detection_unavailable``): fail the request (the default),
obscure the whole image, or skip with a degradation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import pyvips

from imagesvc.context import DetectedObject, StepContext
from imagesvc.errors import DetectionUnavailable
from imagesvc.geometry import Box
from imagesvc.options import ParseContext
from imagesvc.v1 import image_service_pb2 as pb

DETECTION_UNAVAILABLE = "DETECTION_UNAVAILABLE"


class OnDetectionUnavailable(enum.Enum):
    FAIL = "fail"
    OBSCURE_WHOLE_IMAGE = "obscure_whole_image"
    SKIP = "skip"


POLICY_BY_ENUM = {
    pb.DETECTION_UNAVAILABLE_POLICY_UNSPECIFIED: OnDetectionUnavailable.FAIL,
    pb.DETECTION_UNAVAILABLE_POLICY_FAIL: OnDetectionUnavailable.FAIL,
    pb.DETECTION_UNAVAILABLE_POLICY_OBSCURE_WHOLE_IMAGE: OnDetectionUnavailable.OBSCURE_WHOLE_IMAGE,
    pb.DETECTION_UNAVAILABLE_POLICY_SKIP: OnDetectionUnavailable.SKIP,
}


def parse_policy(value: int, path: str, pctx: ParseContext) -> OnDetectionUnavailable:
    """``on_detection_unavailable``: unspecified means FAIL; an unknown number is a violation."""
    policy = POLICY_BY_ENUM.get(value)
    if policy is None:
        pctx.violations.add(path, f"unknown DetectionUnavailablePolicy {value}")
        return OnDetectionUnavailable.FAIL
    return policy


def boxes_or_degrade(
    image: pyvips.Image, classes: frozenset[str] | None, ctx: StepContext, operation: str
) -> list[tuple[DetectedObject, Box]]:
    """Detections to act on, in current-image pixels; records a degradation (and returns none)
    when detection was unavailable."""
    if ctx.detection_failure is not None:
        ctx.degrade(
            DETECTION_UNAVAILABLE,
            operation,
            f"detection unavailable ({ctx.detection_failure}), operation skipped",
        )
        return []
    return ctx.objects_in(image, classes)


def obscure_detections(
    image: pyvips.Image,
    classes: frozenset[str] | None,
    policy: OnDetectionUnavailable,
    ctx: StepContext,
    operation: str,
    obscure: Callable[[pyvips.Image], pyvips.Image],
    obscured: str,
) -> pyvips.Image:
    """The image with the detected objects' boxes replaced by ``obscure(box contents)``.

    When detection was unavailable, ``policy`` decides: FAIL raises DetectionUnavailable (with
    a retry delay of the Triton circuit breaker's IMAGESVC_TRITON_RETRY_AFTER_S),
    OBSCURE_WHOLE_IMAGE obscures the whole image, SKIP returns it untouched; the last two are
    reported as degradations. ``obscured`` says what was done, e.g. "blurred".
    """
    failure = ctx.detection_failure
    if failure is None:
        found = ctx.objects_in(image, classes)
        if not found:
            return image
        image = ctx.random_access(image)
        return rewrite_regions(image, [box for _, box in found], obscure)
    if policy is OnDetectionUnavailable.FAIL:
        raise DetectionUnavailable(
            f"detection unavailable ({failure}); {operation} fails rather than return the image "
            "unobscured (on_detection_unavailable: FAIL)",
            metadata={"operation": operation, "detection_failure": failure},
            retry_after_s=ctx.settings.triton_retry_after_s,
        )
    if policy is OnDetectionUnavailable.OBSCURE_WHOLE_IMAGE:
        ctx.degrade(
            DETECTION_UNAVAILABLE,
            operation,
            f"detection unavailable ({failure}), the whole image was {obscured}",
        )
        return obscure(image).cast(image.format)
    ctx.degrade(
        DETECTION_UNAVAILABLE,
        operation,
        f"detection unavailable ({failure}), operation skipped: the image was not {obscured}",
    )
    return image


def integer_box(box: Box) -> tuple[int, int, int, int]:
    """Pixel-aligned box covering ``box`` (rounded outwards, so no edge pixel is left out)."""
    left, top = int(box.left), int(box.top)
    right, bottom = int(-(-box.right // 1)), int(-(-box.bottom // 1))
    return left, top, max(1, right - left), max(1, bottom - top)


def rewrite_regions(
    image: pyvips.Image,
    boxes: list[Box],
    rewrite: Callable[[pyvips.Image], pyvips.Image],
) -> pyvips.Image:
    """Replace each box of the image with ``rewrite(box contents)``."""
    for box in boxes:
        left, top, width, height = integer_box(box)
        width, height = min(width, image.width - left), min(height, image.height - top)
        region = image.extract_area(left, top, width, height)
        image = image.insert(rewrite(region).cast(image.format), left, top)
    return image
