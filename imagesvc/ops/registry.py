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
    blur_background,
    blur_detections,
    crop,
    crop_objects,
    draw_detections,
    draw_segmentation,
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


def _every_object(options: Any, shape: Any) -> float | None:
    return None


def _own_classes(options: Any) -> frozenset[str] | None:
    # A detection op's own class filter (None: every class).
    return getattr(options, "classes", None)


@dataclass(frozen=True, slots=True)
class OpSpec:
    parse: Callable[..., Any]  # (proto message, field path, ParseContext) -> frozen options
    run: Step
    # (Shape, options, PlanEnv) -> OpEstimate: the step's effect, planned before decoding.
    estimate: Callable[..., Any]
    needs_detections: Callable[[Any], bool] = _never
    # The classes the step needs detected (None: every class); asked only when it needs them.
    detection_classes: Callable[[Any], frozenset[str] | None] = _own_classes
    # Optional, for a step that needs detections: the part of its work that does not depend
    # on them, run (into memory) while they are awaited; ``run`` then takes its output.
    prepare: Step | None = None
    # Whether the step needs the regions (``StepContext.regions``: segmentation and the skin
    # model). Such a step needs detections too (faces seed the skin model): the engine sets
    # regions before detections, so waiting for detections waits for both.
    needs_regions: Callable[[Any], bool] = _never
    # (options, input Shape) -> output pixels per input pixel, for a step that uses its
    # detections only to place its output (gravity): detections too small to show at that
    # scale need not be looked for (inference.face_refine.tiled_faces_visible). None: the
    # step needs every object it is given, whatever its size (drawing, blurring, cropping to
    # them).
    placement_scale: Callable[[Any, Any], float | None] = _every_object


def _spec(module: Any) -> OpSpec:
    return OpSpec(
        module.parse,
        module.run,
        module.estimate,
        getattr(module, "needs_detections", _never),
        getattr(module, "detection_classes", _own_classes),
        getattr(module, "prepare", None),
        getattr(module, "needs_regions", _never),
        getattr(module, "placement_scale", _every_object),
    )


OPS: Mapping[str, OpSpec] = {
    "resize": _spec(resize),
    "crop": _spec(crop),
    "auto_rotate": _spec(auto_rotate),
    "rotate": _spec(rotate),
    "flip": _spec(flip),
    "background": _spec(background),
    "blur": _spec(blur),
    "sharpen": _spec(sharpen),
    "pixelate": _spec(pixelate),
    "draw_detections": _spec(draw_detections),
    "blur_detections": _spec(blur_detections),
    "pixelate_detections": _spec(pixelate_detections),
    "crop_objects": _spec(crop_objects),
    "blur_background": _spec(blur_background),
    "draw_segmentation": _spec(draw_segmentation),
}
