"""``resize``: imgproxy's resizing types fit, fill, fill-down, force and auto, with min sizes,
enlarge, dpr, extend and crop gravity.

libvips calls: ``resize`` (lanczos3, premultiplied when there is alpha), ``extract_area`` for the
fill crop and ``embed`` for extend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.ops import gravity as gravity_mod
from imagesvc.planning import OpEstimate, PlanEnv, Shape, costs
from imagesvc.options import (
    CENTER,
    CompassGravity,
    Gravity,
    ObjectGravity,
    ParseContext,
    check_range,
    parse_compass,
    parse_gravity,
)
from imagesvc.v1 import image_service_pb2 as pb

_TYPES = {
    pb.RESIZING_TYPE_UNSPECIFIED: "fit",
    pb.RESIZING_TYPE_FIT: "fit",
    pb.RESIZING_TYPE_FILL: "fill",
    pb.RESIZING_TYPE_FILL_DOWN: "fill_down",
    pb.RESIZING_TYPE_FORCE: "force",
    pb.RESIZING_TYPE_AUTO: "auto",
}


@dataclass(frozen=True, slots=True)
class ResizeOptions:
    type: str = "fit"
    width: int = 0
    height: int = 0
    min_width: int = 0
    min_height: int = 0
    enlarge: bool = False
    extend: bool = False
    extend_gravity: CompassGravity = CENTER
    gravity: Gravity = CENTER
    dpr: float = 1.0


def parse(msg: pb.Resize, path: str, pctx: ParseContext) -> ResizeOptions:
    limit = pctx.settings.max_result_dimension
    for name in ("width", "height", "min_width", "min_height"):
        check_range(pctx, f"{path}.{name}", getattr(msg, name), 0, limit)
    if msg.type not in _TYPES:
        pctx.violations.add(f"{path}.type", f"unknown resizing type {msg.type}")
    dpr = msg.dpr or 1.0
    check_range(pctx, f"{path}.dpr", dpr, 0, 8, low_open=True)
    return ResizeOptions(
        type=_TYPES.get(msg.type, "fit"),
        width=msg.width,
        height=msg.height,
        min_width=msg.min_width,
        min_height=msg.min_height,
        enlarge=msg.enlarge,
        extend=msg.extend.enabled,
        extend_gravity=parse_compass(msg.extend.gravity, f"{path}.extend.gravity", pctx),
        gravity=parse_gravity(msg.gravity, f"{path}.gravity", pctx),
        dpr=dpr,
    )


def needs_detections(opts: ResizeOptions) -> bool:
    return isinstance(opts.gravity, ObjectGravity) and opts.type in ("fill", "fill_down", "auto")


def placement_scale(opts: ResizeOptions, shape: Shape) -> float | None:
    """Object gravity only places the fill's crop window: the faces matter at the scale the
    image is resized to (the longer side's, when the two differ)."""
    if not needs_detections(opts):
        return None
    geometry = plan(shape.width, shape.height, opts)
    width, height = geometry.resized
    return max(width / max(1, shape.width), height / max(1, shape.height))


def detection_classes(opts: ResizeOptions) -> frozenset[str] | None:
    return opts.gravity.classes if isinstance(opts.gravity, ObjectGravity) else None


def _round(value: float) -> int:
    # libvips rounds half up when it sizes a resize; match it so planned sizes are exact.
    return max(1, int(math.floor(value + 0.5)))


@dataclass(frozen=True, slots=True)
class ResizePlan:
    scale_x: float
    scale_y: float
    resized: tuple[int, int]
    crop: tuple[int, int] | None  # fill / fill-down window inside ``resized``
    extend: tuple[int, int] | None  # canvas to pad the result to


def plan(src_w: int, src_h: int, opts: ResizeOptions) -> ResizePlan:
    """The geometry of a resize of a src_w x src_h image (pure maths, no pixels)."""
    target_w, target_h = (
        _round(opts.width * opts.dpr) if opts.width else 0,
        (_round(opts.height * opts.dpr) if opts.height else 0),
    )
    min_w = _round(opts.min_width * opts.dpr) if opts.min_width else 0
    min_h = _round(opts.min_height * opts.dpr) if opts.min_height else 0
    kind = opts.type
    if kind == "auto":
        same_orientation = (src_w >= src_h) == (target_w >= target_h)
        kind = "fill" if target_w and target_h and same_orientation else "fit"

    ratio_w = target_w / src_w if target_w else None
    ratio_h = target_h / src_h if target_h else None
    if ratio_w is None and ratio_h is None:
        scale_x = scale_y = 1.0
    elif kind == "force":
        scale_x = ratio_w if ratio_w is not None else ratio_h
        scale_y = ratio_h if ratio_h is not None else ratio_w
    else:
        if ratio_w is None or ratio_h is None:
            scale = ratio_w if ratio_w is not None else ratio_h
        elif kind == "fit":
            scale = min(ratio_w, ratio_h)
        else:  # fill, fill_down: cover the target
            scale = max(ratio_w, ratio_h)
        scale_x = scale_y = scale
    if not opts.enlarge:
        scale_x, scale_y = min(scale_x, 1.0), min(scale_y, 1.0)
    # Min sizes win over enlarge=false: they are explicit lower bounds on the result.
    for minimum, side, axis in ((min_w, src_w, "x"), (min_h, src_h, "y")):
        current = side * (scale_x if axis == "x" else scale_y)
        if minimum and current < minimum:
            factor = minimum / current
            if kind == "force":
                scale_x, scale_y = (
                    (scale_x * factor, scale_y) if axis == "x" else (scale_x, scale_y * factor)
                )
            else:
                scale_x, scale_y = scale_x * factor, scale_y * factor
    resized = (_round(src_w * scale_x), _round(src_h * scale_y))

    crop = None
    if kind in ("fill", "fill_down") and target_w and target_h:
        rw, rh = resized
        if kind == "fill" or (rw >= target_w and rh >= target_h):
            crop = (min(target_w, rw), min(target_h, rh))
        elif rw * target_h > rh * target_w:  # fill-down, too small: keep the target's aspect
            crop = (_round(rh * target_w / target_h), rh)
        else:
            crop = (rw, _round(rw * target_h / target_w))
        if crop == resized:
            crop = None

    extend = None
    if opts.extend:
        result = crop or resized
        canvas = (max(target_w or result[0], result[0]), max(target_h or result[1], result[1]))
        if canvas != result:
            extend = canvas
    return ResizePlan(scale_x, scale_y, resized, crop, extend)


def resize_pixels(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Resample to exactly width x height with lanczos3, premultiplying alpha."""
    if (width, height) == (image.width, image.height):
        return image
    scale_x, scale_y = width / image.width, height / image.height
    if image.hasalpha():
        band_format = image.format
        image = image.premultiply().resize(scale_x, vscale=scale_y, kernel="lanczos3")
        return image.unpremultiply().cast(band_format)
    return image.resize(scale_x, vscale=scale_y, kernel="lanczos3")


def with_alpha(image: pyvips.Image) -> pyvips.Image:
    if image.hasalpha():
        return image
    max_alpha = 65535 if image.interpretation in ("rgb16", "grey16") else 255
    return image.bandjoin_const([max_alpha])


def _dpr_offsets(gravity: Gravity, dpr: float) -> Gravity:
    """Compass gravity with its absolute (>= 1 px) offsets multiplied by dpr; fractions stay."""
    if not isinstance(gravity, CompassGravity) or dpr == 1.0:
        return gravity
    x_offset, y_offset = (v * dpr if v >= 1 else v for v in (gravity.x_offset, gravity.y_offset))
    return CompassGravity(gravity.position, x_offset, y_offset)


def _scale(
    image: pyvips.Image, opts: ResizeOptions, ctx: StepContext
) -> tuple[pyvips.Image, ResizePlan]:
    src_w, src_h = ctx.logical_size or (image.width, image.height)
    ctx.logical_size = None
    # Sizes were checked against the budget when the request was planned (see estimate).
    geometry = plan(src_w, src_h, opts)
    current_w, current_h = image.width, image.height
    image = resize_pixels(image, *geometry.resized)
    ctx.map(Affine.scale(image.width / current_w, image.height / current_h))
    return image, geometry


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What ``prepare`` computed for ``run``: the geometry of the scaled image, and the
    centre of the crop's smart fallback on it when that may be needed (else None)."""

    geometry: ResizePlan
    smart_centre: tuple[float, float] | None


def prepare(image: pyvips.Image, opts: ResizeOptions, ctx: StepContext) -> pyvips.Image:
    """The scaling of a resize whose crop awaits detections (object gravity), computed into
    memory while they are awaited: the crop's placement (and smart gravity, its fallback)
    then reads the scaled copy. ``run`` takes it from there (``ctx.prepared``).

    With a worker to spare (``ctx.spare_worker``) the smart fallback's attention centre is
    computed here too, before it is known to be needed: on a photo without the objects that
    saves waiting for it after the detections (~2 ms; libvips' attention costs about that at
    any size), on one with them it is ~2 ms of CPU spent while the request waits for Triton.
    A saturated server spends none (bench/README.md, "Object gravity cost")."""
    image, geometry = _scale(image, opts, ctx)
    image = ctx.materialise(image)
    centre = None
    if (
        ctx.spare_worker
        and geometry.crop is not None
        and gravity_mod.may_fall_back_to_smart(opts.gravity, ctx)
    ):
        centre = gravity_mod.smart_centre(image, *geometry.crop)
    ctx.prepared = (opts, _Prepared(geometry, centre))
    return image


def run(image: pyvips.Image, opts: ResizeOptions, ctx: StepContext) -> pyvips.Image:
    prepared, ctx.prepared = ctx.prepared, None
    smart_centre = None
    if prepared is not None and prepared[0] is opts:
        # ``image`` is already scaled (prepare)
        geometry, smart_centre = prepared[1].geometry, prepared[1].smart_centre
    else:
        image, geometry = _scale(image, opts, ctx)

    if geometry.crop is not None:
        crop_w, crop_h = geometry.crop
        image, left, top = gravity_mod.crop_position(
            image,
            crop_w,
            crop_h,
            _dpr_offsets(opts.gravity, opts.dpr),
            ctx,
            "resize",
            attention_centre=smart_centre,
        )
        image = image.extract_area(left, top, crop_w, crop_h)
        ctx.map(Affine.translate(-left, -top))

    if geometry.extend is not None:
        canvas_w, canvas_h = geometry.extend
        left, top = gravity_mod.compass_position(
            canvas_w,
            canvas_h,
            image.width,
            image.height,
            _dpr_offsets(opts.extend_gravity, opts.dpr),
        )
        # Padding is transparent; formats without alpha flatten it onto the background at save.
        image = with_alpha(image)
        image = image.embed(
            left, top, canvas_w, canvas_h, extend="background", background=[0] * image.bands
        )
        ctx.map(Affine.translate(left, top))
    return image


def estimate(shape: Shape, opts: ResizeOptions, env: PlanEnv) -> OpEstimate:
    geometry = plan(shape.width, shape.height, opts)
    resized = shape.sized(*geometry.resized)
    # The first resize reads what shrink-on-load decoded, smaller than the logical size.
    shrink, env.decode_shrink = env.decode_shrink, 1
    decoded = shape.sized(-(-shape.width // shrink), -(-shape.height // shrink))
    work = costs.resample_s(decoded, resized) if resized != shape else 0.0
    rows = min(decoded.height, costs.RESIZE_BUFFER_ROWS)
    buffer = decoded.width * decoded.bands * 4 * rows if resized.pixels < decoded.pixels else None
    result, random_access = resized, False
    if geometry.crop is not None:
        placing, random_access = gravity_mod.placement_cost(resized, opts.gravity)
        result = resized.sized(*geometry.crop)
        work += placing + costs.copy_s(result)
    if geometry.extend is not None:
        bands = result.bands if result.has_alpha else result.bands + 1
        result = result.with_bands(bands).sized(*geometry.extend)
        work += costs.copy_s(result)
    return OpEstimate(result, work, random_access=random_access, stream_bytes=buffer)
