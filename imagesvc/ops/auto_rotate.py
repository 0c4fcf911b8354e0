"""``auto_rotate``: apply the EXIF orientation and drop the tag (libvips ``autorot``)."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from imagesvc.context import StepContext
from imagesvc.geometry import Affine
from imagesvc.options import ParseContext
from imagesvc.planning import OpEstimate, PlanEnv, Shape
from imagesvc.planning import costs
from imagesvc.v1 import image_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class AutoRotateOptions:
    pass


def parse(msg: pb.AutoRotate, path: str, pctx: ParseContext) -> AutoRotateOptions:
    return AutoRotateOptions()


def orientation_transform(orientation: int, width: int, height: int) -> Affine:
    """Mapping from stored pixels to displayed pixels for an EXIF orientation (1..8)."""
    angle = {3: 180, 4: 180, 5: 90, 6: 90, 7: 270, 8: 270}.get(orientation, 0)
    turned = Affine.rotate_clockwise(angle, width, height)
    if orientation in (2, 4, 5, 7):
        out_w, out_h = (height, width) if angle in (90, 270) else (width, height)
        # 2: mirror; 4: 180 + mirror = vertical flip; 5: 90 + mirror = transpose; 7: 270 + mirror.
        return turned.then(Affine.flip(True, False, out_w, out_h))
    return turned


def orientation_of(image: pyvips.Image) -> int:
    if image.get_typeof("orientation") == 0:
        return 1
    value = image.get("orientation")
    return value if 1 <= value <= 8 else 1


def apply(image: pyvips.Image, ctx: StepContext | None) -> pyvips.Image:
    """Rotate upright. Source coordinates are already oriented, so the transform only changes
    when the step runs after other geometry (it then maps as the rotation does)."""
    orientation = orientation_of(image)
    if orientation == 1:
        return image
    if ctx is not None:
        image = ctx.random_access(image)
        ctx.map(orientation_transform(orientation, image.width, image.height))
        if ctx.logical_size is not None and orientation >= 5:
            # Shrink-on-load's full-size dimensions turn with the image.
            ctx.logical_size = ctx.logical_size[::-1]
    return image.autorot()


def run(image: pyvips.Image, opts: AutoRotateOptions, ctx: StepContext) -> pyvips.Image:
    return apply(image, ctx)


def estimate(shape: Shape, opts: AutoRotateOptions, env: PlanEnv) -> OpEstimate:
    """Turns by the EXIF orientation the load left in place (IMAGESVC_AUTO_ROTATE=false);
    the tag is dropped, so a second auto_rotate does nothing."""
    orientation, env.orientation = env.orientation, 1
    if orientation == 1:
        return OpEstimate(shape, 0.0)
    turned = shape.turned() if orientation >= 5 else shape
    return OpEstimate(turned, costs.copy_s(shape), random_access=True)
