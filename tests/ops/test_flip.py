"""flip: mirrored pixels against numpy and markers through the transform."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import coords, from_array, marker_centre, solid, to_array, with_marker
from imagesvc.ops import flip
from imagesvc.ops.flip import FlipOptions
from imagesvc.v1 import image_service_pb2 as pb

CASES = [
    (True, False, lambda a: a[:, ::-1]),
    (False, True, lambda a: a[::-1, :]),
    (True, True, lambda a: a[::-1, ::-1]),
]


@pytest.mark.parametrize(("horizontal", "vertical", "expected"), CASES)
def test_pixels_are_mirrored(make_ctx, horizontal, vertical, expected):
    source = coords(60, 40)
    out = flip.run(from_array(source), FlipOptions(horizontal, vertical), make_ctx(60, 40))
    assert np.array_equal(to_array(out), expected(source))


@pytest.mark.parametrize(("horizontal", "vertical", "expected"), CASES)
def test_transform_follows_the_pixels(make_ctx, horizontal, vertical, expected):
    ctx = make_ctx(60, 40)
    source = with_marker(solid(60, 40), 7, 30, 3)
    out = flip.run(from_array(source), FlipOptions(horizontal, vertical), ctx)
    assert ctx.transform.point(8.5, 31.5) == pytest.approx(marker_centre(to_array(out)))
    # Flipping twice is the identity.
    flip.run(out, FlipOptions(horizontal, vertical), ctx)
    assert ctx.transform.point(8.5, 31.5) == pytest.approx((8.5, 31.5))


def test_vertical_flip_makes_the_image_random_access(make_ctx):
    ctx = make_ctx(6, 4)
    flip.run(from_array(solid(6, 4)), FlipOptions(False, True), ctx)
    assert ctx.in_memory


def test_no_flip_is_a_no_op(make_ctx):
    image = from_array(solid(6, 4))
    ctx = make_ctx(6, 4)
    assert flip.run(image, FlipOptions(False, False), ctx) is image
    assert ctx.transform.point(1, 2) == (1, 2)


def test_parse(pctx):
    assert flip.parse(pb.Flip(horizontal=True), "f", pctx) == FlipOptions(True, False)
    assert flip.parse(pb.Flip(vertical=True), "f", pctx) == FlipOptions(False, True)
    assert not pctx.violations.items
