"""rotate: quarter turns clockwise, pixels against numpy and markers through the transform."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import coords, from_array, marker_centre, solid, to_array, with_marker
from imagesvc.geometry import Box
from imagesvc.ops import rotate
from imagesvc.ops.rotate import RotateOptions
from imagesvc.v1 import image_service_pb2 as pb


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_pixels_turn_clockwise(make_ctx, angle):
    source = coords(60, 40)
    out = rotate.run(from_array(source), RotateOptions(angle), make_ctx(60, 40))
    # np.rot90 turns counter-clockwise for positive k.
    assert np.array_equal(to_array(out), np.rot90(source, k=-angle // 90))


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_transform_follows_the_pixels(make_ctx, angle):
    ctx = make_ctx(60, 40)
    out = rotate.run(from_array(with_marker(solid(60, 40), 5, 30, 2)), RotateOptions(angle), ctx)
    assert ctx.transform.point(6, 31) == pytest.approx(marker_centre(to_array(out)))
    turned = ctx.transform.box(Box(0, 0, 60, 40))
    assert (turned.width, turned.height) == (out.width, out.height)
    assert (turned.left, turned.top) == pytest.approx((0, 0))


def test_turns_compose(make_ctx):
    ctx = make_ctx(60, 40)
    image = from_array(with_marker(solid(60, 40), 50, 3, 4))
    for angle in (90, 180, 270, 90):
        image = rotate.run(image, RotateOptions(angle), ctx)
    # 630 degrees = 270: the marker is where a single 270 turn puts it.
    single = make_ctx(60, 40)
    rotate.run(from_array(solid(60, 40)), RotateOptions(270), single)
    assert ctx.transform.point(52, 5) == pytest.approx(single.transform.point(52, 5))
    assert ctx.transform.point(52, 5) == pytest.approx(marker_centre(to_array(image)))


def test_zero_is_a_no_op(make_ctx):
    image = from_array(solid(6, 4))
    ctx = make_ctx(6, 4)
    assert rotate.run(image, RotateOptions(0), ctx) is image
    assert ctx.transform.point(1, 2) == (1, 2)


@pytest.mark.parametrize(("angle", "parsed"), [(0, 0), (90, 90), (360, 0), (450, 90), (630, 270)])
def test_parse_normalises_the_angle(pctx, angle, parsed):
    assert rotate.parse(pb.Rotate(angle=angle), "r", pctx) == RotateOptions(parsed)
    assert not pctx.violations.items


def test_parse_rejects_other_angles(pctx):
    rotate.parse(pb.Rotate(angle=45), "p.rotate", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.rotate.angle"]
