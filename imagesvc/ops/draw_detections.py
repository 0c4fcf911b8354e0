"""``draw_detections``: outline detected objects and label them with class and confidence
(imgproxy Pro draw_detections). libvips calls: ``draw_rect``, ``text`` and ``draw_mask``."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.detection_regions import boxes_or_degrade, integer_box
from imagesvc.options import ParseContext, parse_classes
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.v1 import image_service_pb2 as pb

# One colour per class, cycling; chosen to stand out on skin, sky and foliage.
PALETTE = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 96, 0))


@dataclass(frozen=True, slots=True)
class DrawDetectionsOptions:
    classes: frozenset[str] | None


def parse(msg: pb.DrawDetections, path: str, pctx: ParseContext) -> DrawDetectionsOptions:
    return DrawDetectionsOptions(parse_classes(msg.classes, f"{path}.classes", pctx))


def needs_detections(opts: DrawDetectionsOptions) -> bool:
    return True


def _ink(image: pyvips.Image, rgb: tuple[int, int, int]) -> list[float]:
    scale = 257 if image.interpretation in ("rgb16", "grey16") else 1
    colour = [c * scale for c in rgb] if image.bands >= 3 else [max(rgb) * scale]
    if image.hasalpha():
        colour.append(255 * scale)
    return colour


def run(image: pyvips.Image, opts: DrawDetectionsOptions, ctx: StepContext) -> pyvips.Image:
    found = boxes_or_degrade(image, opts.classes, ctx, "draw_detections")
    if not found:
        return image
    image = ctx.random_access(image)
    classes = sorted({obj.class_name for obj, _ in found})
    thickness = max(2, round(min(image.width, image.height) / 200))
    for obj, box in found:
        ink = _ink(image, PALETTE[classes.index(obj.class_name) % len(PALETTE)])
        label = f"{obj.class_name} {obj.confidence:.2f}"
        image = _draw_box(image, integer_box(box), label, ink, thickness)
    return image


def _draw_box(
    image: pyvips.Image,
    box: tuple[int, int, int, int],
    label: str,
    ink: list[float],
    thickness: int,
) -> pyvips.Image:
    """Outline the box and put its label on a tab above it (inside it when there is no room).

    pyvips copies an image before every draw, so the drawing is done on a patch cut around the
    box and its tab, which is then put back: the cost follows the box, not the image.
    """
    left, top, width, height = box
    width, height = min(width, image.width - left), min(height, image.height - top)
    mask = pyvips.Image.text(label, dpi=max(72, thickness * 36), font="sans bold 10")
    tab_w = min(mask.width + 2 * thickness, image.width)
    tab_h = min(mask.height + 2 * thickness, image.height)
    tab_left = min(left, image.width - tab_w)
    tab_top = top - tab_h if top >= tab_h else top
    # The patch: the box and the tab together.
    patch_left, patch_top = min(left, tab_left), min(top, tab_top)
    patch_right = max(left + width, tab_left + tab_w)
    patch_bottom = max(top + height, tab_top + tab_h)
    patch = image.extract_area(
        patch_left, patch_top, patch_right - patch_left, patch_bottom - patch_top
    )
    x, y = left - patch_left, top - patch_top
    # Four filled bands, each at most ``thickness`` deep, inside the box.
    side_w, side_h = min(thickness, width), min(thickness, height)
    for rect in (
        (x, y, width, side_h),
        (x, y + height - side_h, width, side_h),
        (x, y, side_w, height),
        (x + width - side_w, y, side_w, height),
    ):
        patch = patch.draw_rect(ink, *rect, fill=True)
    tab_x, tab_y = tab_left - patch_left, tab_top - patch_top
    patch = patch.draw_rect(ink, tab_x, tab_y, tab_w, tab_h, fill=True)
    text_w, text_h = min(mask.width, tab_w - thickness), min(mask.height, tab_h - thickness)
    if text_w > 0 and text_h > 0:  # an image a few pixels wide has no room for text
        dark = [0.0] * (image.bands - 1) + ([ink[-1]] if image.hasalpha() else [0.0])
        text = mask.extract_area(0, 0, text_w, text_h)
        patch = patch.draw_mask(dark, text, tab_x + thickness, tab_y + thickness)
    return image.insert(patch, patch_left, patch_top)


def estimate(shape: Shape, opts: DrawDetectionsOptions, env: PlanEnv) -> OpEstimate:
    # Drawing happens on small patches around the boxes, put back lazily.
    return OpEstimate(shape, costs.copy_s(shape), random_access=True)
