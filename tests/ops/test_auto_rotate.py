"""auto_rotate: every EXIF orientation against libvips' autorot, and the stored -> displayed
mapping the step composes into the context."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, marker_centre, solid, to_array, with_marker, with_orientation
from imagesvc.geometry import Box
from imagesvc.ops import auto_rotate
from imagesvc.ops.auto_rotate import AutoRotateOptions, orientation_of, orientation_transform
from imagesvc.v1 import image_service_pb2 as pb

SW, SH = 50, 30  # stored size; the red marker is off-centre in both axes
MARKER = (8, 4, 3)  # left, top, size: centre (9.5, 5.5)


def tagged(orientation: int):
    array = with_marker(solid(SW, SH, (40, 40, 40)), *MARKER)
    array = with_marker(array, 40, 20, 2, colour=(0, 255, 0))  # a second, different marker
    return with_orientation(from_array(array), orientation)


# Where the red marker's centre lands when displayed, by orientation (EXIF semantics).
DISPLAYED = {
    1: (9.5, 5.5),
    2: (SW - 9.5, 5.5),  # mirrored
    3: (SW - 9.5, SH - 5.5),  # 180
    4: (9.5, SH - 5.5),  # vertical flip
    5: (5.5, 9.5),  # transpose
    6: (SH - 5.5, 9.5),  # 90 clockwise
    7: (SH - 5.5, SW - 9.5),  # transverse
    8: (5.5, SW - 9.5),  # 270 clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_matches_libvips_autorot(make_ctx, orientation):
    image = tagged(orientation)
    expected = to_array(image.autorot())
    ctx = make_ctx(*((SH, SW) if orientation >= 5 else (SW, SH)))
    out = auto_rotate.run(image, AutoRotateOptions(), ctx)
    assert (out.width, out.height) == ((SH, SW) if orientation >= 5 else (SW, SH))
    assert np.array_equal(to_array(out), expected)
    assert orientation_of(out) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_transform_maps_stored_to_displayed(orientation):
    image = tagged(orientation)
    displayed = to_array(image.autorot())
    mapping = orientation_transform(orientation, SW, SH)
    centre = (MARKER[0] + MARKER[2] / 2, MARKER[1] + MARKER[2] / 2)
    assert mapping.point(*centre) == pytest.approx(DISPLAYED[orientation])
    assert marker_centre(displayed) == pytest.approx(DISPLAYED[orientation])
    green = marker_centre(displayed, colour=(0, 255, 0))
    assert mapping.point(41, 21) == pytest.approx(green)
    # Whole image: the stored rectangle maps onto the displayed one.
    bounds = mapping.box(Box(0, 0, SW, SH))
    assert (bounds.left, bounds.top) == pytest.approx((0, 0))
    assert (bounds.width, bounds.height) == ((SH, SW) if orientation >= 5 else (SW, SH))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_run_composes_the_mapping_into_the_context(make_ctx, orientation):
    ctx = make_ctx(SW, SH)
    out = auto_rotate.run(tagged(orientation), AutoRotateOptions(), ctx)
    assert ctx.transform.point(9.5, 5.5) == pytest.approx(marker_centre(to_array(out)))
    assert ctx.in_memory


def test_upright_image_is_returned_untouched(make_ctx):
    image = tagged(1)
    ctx = make_ctx(SW, SH)
    assert auto_rotate.run(image, AutoRotateOptions(), ctx) is image
    assert ctx.transform.point(3, 4) == (3, 4)


def test_untagged_and_invalid_orientations_count_as_upright():
    untagged = from_array(solid(4, 4))
    assert orientation_of(untagged) == 1
    assert orientation_of(with_orientation(untagged, 9)) == 1
    assert orientation_of(with_orientation(untagged, 0)) == 1
    assert orientation_of(with_orientation(untagged, 6)) == 6


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_quarter_turns_swap_the_logical_size(make_ctx, orientation):
    # After shrink-on-load with load-time rotation off, the logical (full-size) dimensions the
    # first resize plans from must turn with the image.
    ctx = make_ctx(SW * 4, SH * 4)
    ctx.logical_size = (SW * 4, SH * 4)
    auto_rotate.run(tagged(orientation), AutoRotateOptions(), ctx)
    assert ctx.logical_size == (SH * 4, SW * 4)


def test_parse(pctx):
    assert auto_rotate.parse(pb.AutoRotate(), "a", pctx) == AutoRotateOptions()
    assert not pctx.violations.items
