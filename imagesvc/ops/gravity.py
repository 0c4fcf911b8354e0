"""Where a crop of a given size goes: compass, focus point, smart (libvips attention) and object
gravity. Shared by resize (fill) and crop."""

from __future__ import annotations

import math

import pyvips

from imagesvc.context import StepContext
from imagesvc.objects import placement
from imagesvc.planning import Shape, costs
from imagesvc.options import (
    CENTER,
    CompassGravity,
    FocusPointGravity,
    Gravity,
    ObjectGravity,
    SmartGravity,
)


def _offset(value: float, side: int) -> float:
    # imgproxy: offsets >= 1 are pixels, smaller ones a fraction of the image side.
    return value if value >= 1 else value * side


def compass_position(
    width: int, height: int, crop_w: int, crop_h: int, gravity: CompassGravity
) -> tuple[int, int]:
    """Top-left corner of a crop_w x crop_h window inside width x height."""
    pos = gravity.position
    dx, dy = _offset(gravity.x_offset, width), _offset(gravity.y_offset, height)
    if "west" in pos:
        left = dx
    elif "east" in pos:
        left = width - crop_w - dx
    else:
        left = (width - crop_w) / 2 + dx
    if pos.startswith("north"):
        top = dy
    elif pos.startswith("south"):
        top = height - crop_h - dy
    else:
        top = (height - crop_h) / 2 + dy
    return _clamp(left, width - crop_w), _clamp(top, height - crop_h)


def centred_on(
    width: int, height: int, crop_w: int, crop_h: int, cx: float, cy: float
) -> tuple[int, int]:
    """Window centred on (cx, cy) as far as the image edges allow."""
    return _clamp(cx - crop_w / 2, width - crop_w), _clamp(cy - crop_h / 2, height - crop_h)


def _clamp(value: float, upper: int) -> int:
    # Half-pixel leftovers go right/down, whatever the size (Python's round() would alternate).
    return int(math.floor(min(max(value, 0.0), max(upper, 0)) + 0.5))


def smart_centre(image: pyvips.Image, crop_w: int, crop_h: int) -> tuple[float, float]:
    """Centre of libvips' attention crop (edges, skin tones, saturated colours)."""
    _, extra = image.smartcrop(
        crop_w, crop_h, interesting="attention", attention_x=True, attention_y=True
    )
    return float(extra["attention_x"]), float(extra["attention_y"])


def crop_position(
    image: pyvips.Image,
    crop_w: int,
    crop_h: int,
    gravity: Gravity,
    ctx: StepContext,
    operation: str,
    *,
    attention_centre: tuple[float, float] | None = None,
) -> tuple[pyvips.Image, int, int]:
    """Place the crop; returns the image (possibly made random-access) and the top-left corner.

    Object gravity places the crop by its mode, weights and objects position
    (`imagesvc.objects.placement`); with nothing found it falls back to smart gravity (or centre,
    by IMAGESVC_OBJECT_DETECTION_FALLBACK_TO_SMART_CROP), and when detection was unavailable it
    says so as a degradation. ``attention_centre``: smart gravity's centre of this image for this
    crop, computed ahead (`imagesvc.ops.resize.prepare`): smart gravity then reads no pixels.
    """
    width, height = image.width, image.height
    if isinstance(gravity, CompassGravity):
        return (image, *compass_position(width, height, crop_w, crop_h, gravity))
    if isinstance(gravity, FocusPointGravity):
        return (
            image,
            *centred_on(width, height, crop_w, crop_h, gravity.x * width, gravity.y * height),
        )
    if isinstance(gravity, ObjectGravity):
        found = ctx.objects_in(image, gravity.classes)
        if found:
            objects = placement.weighted(
                [(obj.class_name, obj.confidence, box) for obj, box in found],
                gravity.weights,
                ctx.class_weights,
            )
            mode = gravity.mode or ctx.settings.object_gravity_mode
            return (
                image,
                *placement.place(width, height, crop_w, crop_h, objects, mode, gravity.position),
            )
        if ctx.detection_failure is not None:
            fallback = "smart" if ctx.settings.object_detection_fallback_to_smart_crop else "centre"
            ctx.degrade(
                "DETECTION_UNAVAILABLE",
                operation,
                f"detection unavailable ({ctx.detection_failure}), fell back to {fallback} crop",
            )
        if not ctx.settings.object_detection_fallback_to_smart_crop:
            return (image, *compass_position(width, height, crop_w, crop_h, CENTER))
    assert isinstance(gravity, (SmartGravity, ObjectGravity))
    if attention_centre is None:
        image = ctx.random_access(image)
        cx, cy = smart_centre(image, crop_w, crop_h)
    else:
        cx, cy = attention_centre
    return (image, *centred_on(width, height, crop_w, crop_h, cx, cy))


def may_fall_back_to_smart(gravity: Gravity, ctx: StepContext) -> bool:
    """Whether placing a crop by ``gravity`` may end in smart gravity's attention centre:
    smart gravity always, object gravity when it finds nothing and the fallback is smart."""
    if isinstance(gravity, SmartGravity):
        return True
    return (
        isinstance(gravity, ObjectGravity) and ctx.settings.object_detection_fallback_to_smart_crop
    )


def placement_cost(shape: Shape, gravity: Gravity) -> tuple[float, bool]:
    """(CPU-seconds, needs random access) of placing a crop in an image of ``shape``: smart
    gravity runs libvips' attention crop over the image in memory, and object gravity may fall
    back to it (nothing found, or detection unavailable), so it is planned as smart."""
    if isinstance(gravity, (SmartGravity, ObjectGravity)):
        return costs.smartcrop_s(shape), True
    return 0.0, False
