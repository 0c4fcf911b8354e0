"""crop: sizes (pixels, fractions, 0 = whole side) and placement by every gravity, checked on the
pixels of a coordinate image (red = x, green = y) and on the step's transform."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import coords_image, from_array, origin_of, to_array
from tests.ops.test_gravity import saliency_image
from imagesvc.context import DetectedObject
from imagesvc.geometry import Box
from imagesvc.ops import crop
from imagesvc.ops.crop import CropOptions, crop_size
from imagesvc.options import CompassGravity, FocusPointGravity, ObjectGravity, SmartGravity
from imagesvc.v1 import image_service_pb2 as pb

W, H = 100, 80  # the coordinate image
CW, CH = 40, 30  # the crop


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (0, 100),
        (1, 1),
        (40, 40),
        (40.9, 40),
        (100, 100),
        (500, 100),
        (0.5, 50),
        (0.333, 33),
        (0.337, 34),
    ],
)
def test_crop_size(requested, expected):
    assert crop_size(100, requested) == expected


def test_tiny_fraction_keeps_one_pixel():
    assert crop_size(100, 0.001) == 1


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(40, 30, (40, 30)), (0.5, 0.25, (50, 20)), (0, 30, (100, 30)), (40, 0, (40, 80))],
)
def test_run_gives_the_requested_size(make_ctx, width, height, size):
    out = crop.run(coords_image(W, H), CropOptions(width, height), make_ctx(W, H))
    assert (out.width, out.height) == size


def test_whole_image_crop_is_a_no_op(make_ctx):
    image = coords_image(W, H)
    ctx = make_ctx(W, H)
    assert crop.run(image, CropOptions(0, 0), ctx) is image
    assert crop.run(image, CropOptions(1000, 1000), ctx) is image
    assert ctx.transform.point(3, 4) == (3, 4)


# (position) -> (left, top) without offsets; offsets (7 px, 4 px) or (10%, 25%) = (10, 20) px
ANCHORS = {
    "north_west": (0, 0),
    "north": (30, 0),
    "north_east": (60, 0),
    "west": (0, 25),
    "center": (30, 25),
    "east": (60, 25),
    "south_west": (0, 50),
    "south": (30, 50),
    "south_east": (60, 50),
}


def shifted(position: str, anchor: tuple[int, int], dx: int, dy: int) -> tuple[int, int]:
    left, top = anchor
    left += -dx if "east" in position else dx
    top += -dy if position.startswith("south") else dy
    return left, top


@pytest.mark.parametrize("position", ANCHORS)
@pytest.mark.parametrize(
    ("x_offset", "y_offset", "dx", "dy"),
    [(0, 0, 0, 0), (7, 4, 7, 4), (0.1, 0.25, 10, 20)],
    ids=["none", "pixels", "fractions"],
)
def test_compass_placement(make_ctx, position, x_offset, y_offset, dx, dy):
    ctx = make_ctx(W, H)
    out = crop.run(
        coords_image(W, H),
        CropOptions(CW, CH, CompassGravity(position, x_offset, y_offset)),
        ctx,
    )
    expected = shifted(position, ANCHORS[position], dx, dy)
    assert (out.width, out.height) == (CW, CH)
    assert origin_of(out) == expected
    # The whole window is the source region, not only its corner.
    left, top = expected
    pixels = to_array(out)
    assert (pixels[:, :, 0] == np.arange(left, left + CW)[None, :]).all()
    assert (pixels[:, :, 1] == np.arange(top, top + CH)[:, None]).all()
    # The transform maps source pixels to the crop.
    assert ctx.transform.point(left + 3, top + 2) == (3, 2)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (0.5, 0.5, (30, 25)),
        (0.3, 0.6, (10, 33)),  # centred on (30, 48)
        (0.0, 0.0, (0, 0)),  # clamped at the top-left
        (1.0, 1.0, (60, 50)),  # clamped at the bottom-right
        (0.95, 0.05, (60, 0)),
    ],
)
def test_focus_point_placement_and_clamping(make_ctx, x, y, expected):
    out = crop.run(coords_image(W, H), CropOptions(CW, CH, FocusPointGravity(x, y)), make_ctx(W, H))
    assert origin_of(out) == expected


@pytest.mark.parametrize("block_left", [10, 240])
def test_smart_gravity_keeps_the_salient_block(make_ctx, block_left):
    out = crop.run(
        from_array(saliency_image(block_left)),
        CropOptions(80, 0, SmartGravity()),
        make_ctx(300, 100),
    )
    pixels = to_array(out).astype(int)
    red = (pixels[:, :, 0] > 200) & (pixels[:, :, 1] < 60)
    assert red.sum() == 40 * 40  # the whole block is in the crop


def test_object_gravity_centres_on_the_detection(make_ctx):
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(20, 30, 10, 10))])
    out = crop.run(coords_image(W, H), CropOptions(CW, CH, ObjectGravity(None)), ctx)
    assert origin_of(out) == (5, 20)  # centre (25, 35)
    assert ctx.degradations == []


def test_object_gravity_falls_back_to_smart_when_detection_failed(make_ctx):
    ctx = make_ctx(300, 100, detection_failure="TRITON_TIMEOUT")
    ctx.objects = []
    out = crop.run(
        from_array(saliency_image(240)), CropOptions(80, 0, ObjectGravity(frozenset({"face"}))), ctx
    )
    pixels = to_array(out).astype(int)
    assert ((pixels[:, :, 0] > 200) & (pixels[:, :, 1] < 60)).sum() == 40 * 40
    degradations = [(d.reason, d.operation) for d in ctx.degradations]
    assert degradations == [("DETECTION_UNAVAILABLE", "crop")]


def test_crop_after_crop_composes_the_transform(make_ctx):
    ctx = make_ctx(W, H)
    first = crop.run(coords_image(W, H), CropOptions(60, 60, CompassGravity("south_east")), ctx)
    second = crop.run(first, CropOptions(20, 20, CompassGravity("north_west", 5, 6)), ctx)
    assert origin_of(second) == (45, 26)
    assert ctx.transform.point(45, 26) == (0, 0)


def test_parse(pctx, settings):
    opts = crop.parse(
        pb.Crop(width=0.5, height=10, gravity=pb.Gravity(smart=pb.SmartGravity())), "c", pctx
    )
    assert opts == CropOptions(0.5, 10, SmartGravity())
    assert not pctx.violations.items
    assert crop.needs_detections(CropOptions(1, 1, ObjectGravity(None)))
    assert not crop.needs_detections(opts)


def test_parse_reports_negative_and_oversized_sides(pctx, settings):
    crop.parse(pb.Crop(width=-1, height=settings.max_result_dimension + 1), "p.crop", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.crop.width", "p.crop.height"]


def test_parse_reports_bad_gravity(pctx):
    msg = pb.Crop(
        width=10,
        gravity=pb.Gravity(compass=pb.CompassGravity(position=pb.COMPASS_EAST, x_offset=-2)),
    )
    crop.parse(msg, "p.crop", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.crop.gravity.compass.x_offset"]
    pctx.violations.items.clear()
    crop.parse(pb.Crop(gravity=pb.Gravity(focus_point=pb.FocusPoint(x=1.5, y=-0.1))), "c", pctx)
    assert [v.field for v in pctx.violations.items] == [
        "c.gravity.focus_point.x",
        "c.gravity.focus_point.y",
    ]
