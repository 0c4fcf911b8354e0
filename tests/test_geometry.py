"""Affine mappings and boxes used to carry detections between coordinate systems."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from imagesvc.geometry import Affine, Box

coord = st.floats(-1000, 1000, allow_nan=False)
positive = st.floats(0.05, 20, allow_nan=False)
sizes = st.integers(1, 500)


def test_box_edges():
    box = Box(10, 20, 30, 40)
    assert (box.right, box.bottom) == (40, 60)


@pytest.mark.parametrize(
    ("box", "clipped"),
    [
        (Box(10, 10, 20, 20), Box(10, 10, 20, 20)),
        (Box(-5, -5, 20, 20), Box(0, 0, 15, 15)),
        (Box(90, 40, 30, 30), Box(90, 40, 10, 10)),
        (Box(-10, -10, 200, 200), Box(0, 0, 100, 50)),
        (Box(100, 0, 10, 10), None),  # right of the image
        (Box(10, 49.5, 10, 10), None),  # less than a pixel left
        (Box(0, 0, 0.5, 20), None),
    ],
)
def test_box_clip(box, clipped):
    assert box.clip(100, 50) == clipped


def test_identity_and_basic_maps():
    assert Affine().point(3, 4) == (3, 4)
    assert Affine.scale(2, 3).point(3, 4) == (6, 12)
    assert Affine.translate(-1, 5).point(3, 4) == (2, 9)


def test_then_applies_left_first():
    scale_then_shift = Affine.scale(2, 2).then(Affine.translate(10, 0))
    shift_then_scale = Affine.translate(10, 0).then(Affine.scale(2, 2))
    assert scale_then_shift.point(1, 1) == (12, 2)
    assert shift_then_scale.point(1, 1) == (22, 2)


@pytest.mark.parametrize(
    ("angle", "corner_to_origin"),
    [(90, (0, 40)), (180, (60, 40)), (270, (60, 0))],
)
def test_rotation_maps_the_right_corner_to_the_origin(angle, corner_to_origin):
    # A 60x40 image: which source corner ends up top-left after a clockwise turn.
    rotation = Affine.rotate_clockwise(angle, 60, 40)
    assert rotation.point(*corner_to_origin) == pytest.approx((0, 0))
    out = rotation.box(Box(0, 0, 60, 40))
    assert (out.width, out.height) == ((40, 60) if angle in (90, 270) else (60, 40))
    assert (out.left, out.top) == pytest.approx((0, 0))


def test_rotation_by_zero_or_360_is_the_identity():
    assert Affine.rotate_clockwise(0, 5, 7) == Affine()
    assert Affine.rotate_clockwise(360, 5, 7) == Affine()
    assert Affine.rotate_clockwise(450, 5, 7) == Affine.rotate_clockwise(90, 5, 7)


@hsettings(max_examples=100, deadline=None)
@given(width=sizes, height=sizes, x=coord, y=coord)
def test_four_quarter_turns_are_the_identity(width, height, x, y):
    turn = Affine()
    w, h = width, height
    for _ in range(4):
        turn = turn.then(Affine.rotate_clockwise(90, w, h))
        w, h = h, w
    assert turn.point(x, y) == pytest.approx((x, y), abs=1e-6)


@hsettings(max_examples=100, deadline=None)
@given(width=sizes, height=sizes, h=st.booleans(), v=st.booleans(), x=coord, y=coord)
def test_flipping_twice_is_the_identity(width, height, h, v, x, y):
    flip = Affine.flip(h, v, width, height)
    assert flip.then(flip).point(x, y) == pytest.approx((x, y), abs=1e-6)


def test_flip_maps_edges_to_edges():
    flip = Affine.flip(True, True, 60, 40)
    assert flip.point(0, 0) == (60, 40)
    assert flip.point(60, 40) == (0, 0)
    assert Affine.flip(True, False, 60, 40).point(10, 5) == (50, 5)


@st.composite
def affines(draw):
    """Compositions of the mappings the steps use (scales, shifts, quarter turns, flips)."""
    result = Affine()
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["scale", "translate", "rotate", "flip"]))
        if kind == "scale":
            step = Affine.scale(draw(positive), draw(positive))
        elif kind == "translate":
            step = Affine.translate(draw(coord), draw(coord))
        elif kind == "rotate":
            step = Affine.rotate_clockwise(draw(st.sampled_from([90, 180, 270])), 80, 50)
        else:
            step = Affine.flip(draw(st.booleans()), draw(st.booleans()), 80, 50)
        result = result.then(step)
    return result


@hsettings(max_examples=200, deadline=None)
@given(mapping=affines(), x=coord, y=coord)
def test_inverse_undoes_the_mapping(mapping, x, y):
    there = mapping.point(x, y)
    back = mapping.inverse().point(*there)
    assert back == pytest.approx((x, y), rel=1e-6, abs=1e-6)
    assert mapping.then(mapping.inverse()).point(x, y) == pytest.approx((x, y), rel=1e-6, abs=1e-6)


@hsettings(max_examples=200, deadline=None)
@given(mapping=affines(), left=coord, top=coord, width=st.floats(0, 300), height=st.floats(0, 300))
def test_box_maps_to_the_bounds_of_its_corners(mapping, left, top, width, height):
    box = Box(left, top, width, height)
    out = mapping.box(box)
    corners = [mapping.point(x, y) for x in (box.left, box.right) for y in (box.top, box.bottom)]
    for x, y in corners:
        assert out.left - 1e-6 <= x <= out.right + 1e-6
        assert out.top - 1e-6 <= y <= out.bottom + 1e-6
    # Boxes survive a round trip (the maps the steps use keep boxes axis-aligned).
    back = mapping.inverse().box(out)
    assert (back.left, back.top, back.width, back.height) == pytest.approx(
        (left, top, width, height), rel=1e-6, abs=1e-5
    )


def test_singular_mapping_has_no_inverse():
    with pytest.raises(ValueError):
        Affine.scale(0, 1).inverse()
