"""``draw_detections``: outline detected objects and label them with class and confidence
(imgproxy Pro draw_detections). libvips calls: ``draw_rect``, ``text`` and ``draw_mask``."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops.detection_regions import boxes_or_degrade, integer_box
from imagesvc.options import ParseContext, parse_classes
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
        left, top, width, height = integer_box(box)
        for inset in range(thickness):
            if width - 2 * inset <= 0 or height - 2 * inset <= 0:
                break
            image = image.draw_rect(
                ink, left + inset, top + inset, width - 2 * inset, height - 2 * inset
            )
        image = _label(image, f"{obj.class_name} {obj.confidence:.2f}", left, top, ink, thickness)
    return image


def _label(
    image: pyvips.Image, text: str, left: int, top: int, ink: list[float], thickness: int
) -> pyvips.Image:
    """Paint the label on a filled tab above the box (inside it when there is no room)."""
    dpi = max(72, thickness * 36)
    mask = pyvips.Image.text(text, dpi=dpi, font="sans bold 10")
    pad = thickness
    tab_w, tab_h = min(mask.width + 2 * pad, image.width), min(mask.height + 2 * pad, image.height)
    tab_left = min(left, image.width - tab_w)
    tab_top = top - tab_h if top >= tab_h else top
    image = image.draw_rect(ink, tab_left, tab_top, tab_w, tab_h, fill=True)
    text_mask = mask.extract_area(0, 0, min(mask.width, tab_w - pad), min(mask.height, tab_h - pad))
    dark = [0.0] * (image.bands - 1) + ([ink[-1]] if image.hasalpha() else [0.0])
    return image.draw_mask(dark, text_mask, tab_left + pad, tab_top + pad)
