"""The one explicit registry of pipeline operations, keyed by the ``Operation.op`` oneof field
name. A unit test fails when a proto operation has no entry here (or an entry has no proto)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyvips

from imagesvc.context import StepContext
from imagesvc.ops import (
    auto_rotate,
    background,
    blur,
    blur_detections,
    crop,
    draw_detections,
    flip,
    pixelate,
    pixelate_detections,
    resize,
    rotate,
    sharpen,
)

Step = Callable[[pyvips.Image, Any, StepContext], pyvips.Image]


def _never(options: Any) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class OpSpec:
    parse: Callable[..., Any]  # (proto message, field path, ParseContext) -> frozen options
    run: Step
    needs_detections: Callable[[Any], bool] = _never


OPS: Mapping[str, OpSpec] = {
    "resize": OpSpec(resize.parse, resize.run, resize.needs_detections),
    "crop": OpSpec(crop.parse, crop.run, crop.needs_detections),
    "auto_rotate": OpSpec(auto_rotate.parse, auto_rotate.run),
    "rotate": OpSpec(rotate.parse, rotate.run),
    "flip": OpSpec(flip.parse, flip.run),
    "background": OpSpec(background.parse, background.run),
    "blur": OpSpec(blur.parse, blur.run),
    "sharpen": OpSpec(sharpen.parse, sharpen.run),
    "pixelate": OpSpec(pixelate.parse, pixelate.run),
    "draw_detections": OpSpec(
        draw_detections.parse, draw_detections.run, draw_detections.needs_detections
    ),
    "blur_detections": OpSpec(
        blur_detections.parse, blur_detections.run, blur_detections.needs_detections
    ),
    "pixelate_detections": OpSpec(
        pixelate_detections.parse, pixelate_detections.run, pixelate_detections.needs_detections
    ),
}
