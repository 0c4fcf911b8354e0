"""Shared by the three detection operations: find the boxes to touch, report when detection was
unavailable, and rewrite image regions in place of the originals."""

from __future__ import annotations

from collections.abc import Callable

import pyvips

from imagesvc.context import DetectedObject, StepContext
from imagesvc.geometry import Box


def boxes_or_degrade(
    image: pyvips.Image, classes: frozenset[str] | None, ctx: StepContext, operation: str
) -> list[tuple[DetectedObject, Box]]:
    """Detections to act on, in current-image pixels; records a degradation (and returns none)
    when detection was unavailable."""
    if ctx.detection_failure is not None:
        ctx.degrade(
            "DETECTION_UNAVAILABLE",
            operation,
            f"detection unavailable ({ctx.detection_failure}), operation skipped",
        )
        return []
    return ctx.objects_in(image, classes)


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
