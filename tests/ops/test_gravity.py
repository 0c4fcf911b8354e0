"""Crop placement shared by resize (fill) and crop: compass maths, focus points, smart (libvips
attention) and object gravity with its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from tests.images import from_array
from imagesvc.context import DetectedObject
from imagesvc.geometry import Affine, Box
from imagesvc.ops import gravity
from imagesvc.options import (
    ClassWeights,
    CompassGravity,
    FocusPointGravity,
    ObjectGravity,
    SmartGravity,
)
from imagesvc.settings import Settings

# A 300x200 image, a 100x50 window: the free room is 200 px across and 150 px down.
W, H, CW, CH = 300, 200, 100, 50


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("north_west", (0, 0)),
        ("north", (100, 0)),
        ("north_east", (200, 0)),
        ("west", (0, 75)),
        ("center", (100, 75)),
        ("east", (200, 75)),
        ("south_west", (0, 150)),
        ("south", (100, 150)),
        ("south_east", (200, 150)),
    ],
)
def test_compass_anchors(position, expected):
    assert gravity.compass_position(W, H, CW, CH, CompassGravity(position)) == expected


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        # Offsets move away from the anchor edge; for centre they move right / down.
        ("north_west", (12, 20)),
        ("south_east", (188, 130)),
        ("center", (112, 95)),
        ("north_east", (188, 20)),
        ("south_west", (12, 130)),
    ],
)
def test_compass_offsets_pixels_and_fractions(position, expected):
    pixels = CompassGravity(position, x_offset=12, y_offset=20)
    fractions = CompassGravity(position, x_offset=0.04, y_offset=0.1)  # 4% of 300, 10% of 200
    assert gravity.compass_position(W, H, CW, CH, pixels) == expected
    assert gravity.compass_position(W, H, CW, CH, fractions) == expected


def test_an_offset_of_one_is_one_pixel():
    # >= 1 is pixels: 1 is a pixel, not 100% of the side.
    one = CompassGravity("north_west", x_offset=1, y_offset=1)
    assert gravity.compass_position(W, H, CW, CH, one) == (1, 1)


def test_compass_offsets_are_clamped_inside_the_image():
    far = CompassGravity("north_west", x_offset=1000, y_offset=1000)
    assert gravity.compass_position(W, H, CW, CH, far) == (200, 150)
    far_east = CompassGravity("south_east", x_offset=1000, y_offset=1000)
    assert gravity.compass_position(W, H, CW, CH, far_east) == (0, 0)


def test_compass_window_as_large_as_the_image_sits_at_the_origin():
    for position in ("north_west", "center", "south_east"):
        assert gravity.compass_position(W, H, W, H, CompassGravity(position, 5, 5)) == (0, 0)


@hsettings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 500),
    height=st.integers(1, 500),
    data=st.data(),
    position=st.sampled_from(
        ["north", "south", "east", "west", "center"]
        + ["north_east", "north_west", "south_east", "south_west"]
    ),
    x_offset=st.one_of(st.floats(0, 0.999), st.integers(1, 600).map(float)),
    y_offset=st.one_of(st.floats(0, 0.999), st.integers(1, 600).map(float)),
)
def test_compass_window_always_lies_inside(width, height, data, position, x_offset, y_offset):
    crop_w = data.draw(st.integers(1, width))
    crop_h = data.draw(st.integers(1, height))
    left, top = gravity.compass_position(
        width, height, crop_w, crop_h, CompassGravity(position, x_offset, y_offset)
    )
    assert 0 <= left <= width - crop_w
    assert 0 <= top <= height - crop_h


def test_centred_on_clamps_at_every_edge():
    assert gravity.centred_on(W, H, CW, CH, 150, 100) == (100, 75)
    assert gravity.centred_on(W, H, CW, CH, 0, 0) == (0, 0)
    assert gravity.centred_on(W, H, CW, CH, W, H) == (200, 150)
    assert gravity.centred_on(W, H, CW, CH, 10, H - 5) == (0, 150)


def test_focus_point_keeps_the_point_at_the_window_centre(make_ctx):
    image = from_array(np.zeros((H, W, 3), np.uint8))
    _, left, top = gravity.crop_position(
        image, CW, CH, FocusPointGravity(0.4, 0.5), make_ctx(W, H), "crop"
    )
    assert (left + CW / 2, top + CH / 2) == (120, 100)


def test_object_gravity_centres_on_the_union_of_matching_objects_when_they_fit(make_ctx):
    objects = [
        DetectedObject("face", 0.9, Box(100, 60, 20, 20)),
        DetectedObject("face", 0.8, Box(180, 100, 20, 20)),  # union: 100..200 x 60..120
        DetectedObject("person", 0.9, Box(0, 0, 30, 30)),  # another class: ignored
    ]
    ctx = make_ctx(W, H, objects=objects)
    image = from_array(np.zeros((H, W, 3), np.uint8))
    _, left, top = gravity.crop_position(
        image, 100, 80, ObjectGravity(frozenset({"face"})), ctx, "crop"
    )
    assert (left, top) == (100, 50)
    assert ctx.degradations == []


def test_object_gravity_keeps_one_face_whole_rather_than_halves_of_two(make_ctx):
    # The union (60 px tall) cannot fit a 50 px window: centring on it cut both faces. The
    # default mode keeps the more confident one whole and clear of the other.
    objects = [
        DetectedObject("face", 0.9, Box(100, 60, 20, 20)),
        DetectedObject("face", 0.8, Box(180, 100, 20, 20)),
    ]
    ctx = make_ctx(W, H, objects=objects)
    image = from_array(np.zeros((H, W, 3), np.uint8))
    _, left, top = gravity.crop_position(image, CW, CH, ObjectGravity(None), ctx, "crop")
    assert left <= 100 and 120 <= left + CW and top <= 60 and 80 <= top + CH
    assert left + CW <= 180 or top + CH <= 100  # the other face is not cut


def test_object_gravity_mode_and_weights_come_from_the_request(make_ctx):
    objects = [
        DetectedObject("face", 0.9, Box(20, 60, 40, 40)),
        DetectedObject("hand", 0.9, Box(240, 60, 20, 20)),
    ]
    ctx = make_ctx(W, H, objects=objects)
    image = from_array(np.zeros((H, W, 3), np.uint8))
    plain = ObjectGravity(None, mode="one_best")
    weighted = ObjectGravity(None, mode="one_best", weights=ClassWeights((("hand", 10.0),)))
    _, left, _ = gravity.crop_position(image, CW, CH, plain, ctx, "crop")
    assert left <= 20 and 60 <= left + CW  # the larger face
    _, left, _ = gravity.crop_position(image, CW, CH, weighted, ctx, "crop")
    assert left <= 240 and 260 <= left + CW  # the hand, ten times the weight


def test_object_gravity_weights_default_to_the_classes_files(make_ctx):
    objects = [
        DetectedObject("face", 0.9, Box(20, 60, 40, 40)),
        DetectedObject("hand", 0.9, Box(240, 60, 20, 20)),
    ]
    ctx = make_ctx(W, H, objects=objects)
    ctx.class_weights = {"hand": 10.0}
    image = from_array(np.zeros((H, W, 3), np.uint8))
    _, left, _ = gravity.crop_position(
        image, CW, CH, ObjectGravity(None, mode="one_best"), ctx, "crop"
    )
    assert left <= 240 and 260 <= left + CW


def test_object_gravity_without_objects_can_fall_back_to_centre(make_ctx):
    settings = Settings(object_detection_fallback_to_smart_crop=False)
    ctx = make_ctx(300, 100, objects=[])
    ctx.settings = settings
    image = from_array(saliency_image(240))
    _, left, _ = gravity.crop_position(image, 80, 100, ObjectGravity(None), ctx, "resize")
    assert left == 110
    assert not ctx.in_memory  # no smart crop ran


def test_object_gravity_uses_the_current_transform(make_ctx):
    # Detections are in source pixels; the image the step sees is the source halved.
    ctx = make_ctx(600, 400, objects=[DetectedObject("face", 0.9, Box(500, 300, 40, 40))])
    ctx.transform = Affine.scale(0.5, 0.5)
    image = from_array(np.zeros((H, W, 3), np.uint8))
    _, left, top = gravity.crop_position(image, CW, CH, ObjectGravity(None), ctx, "crop")
    assert (left, top) == (200, 135)  # centre (260, 160): x clamped at the right edge


def saliency_image(block_left: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    array = (np.full((100, 300, 3), 120) + rng.integers(-6, 7, (100, 300, 3))).astype(np.uint8)
    array[30:70, block_left : block_left + 40] = (230, 20, 40)
    return array


@pytest.mark.parametrize("block_left", [10, 130, 240])
def test_smart_gravity_finds_the_saturated_block(make_ctx, block_left):
    image = from_array(saliency_image(block_left))
    ctx = make_ctx(300, 100)
    _, left, top = gravity.crop_position(image, 80, 100, SmartGravity(), ctx, "crop")
    assert left <= block_left and block_left + 40 <= left + 80
    assert ctx.in_memory  # smartcrop reads the image more than once


def test_object_gravity_without_matches_falls_back_to_smart_silently(make_ctx):
    ctx = make_ctx(300, 100, objects=[DetectedObject("person", 0.9, Box(0, 0, 10, 10))])
    image = from_array(saliency_image(240))
    _, left, _ = gravity.crop_position(
        image, 80, 100, ObjectGravity(frozenset({"face"})), ctx, "resize"
    )
    assert left <= 240 and 280 <= left + 80
    assert ctx.degradations == []


def test_object_gravity_reports_unavailable_detection(make_ctx):
    ctx = make_ctx(300, 100, detection_failure="TRITON_UNAVAILABLE")
    ctx.objects = []
    image = from_array(saliency_image(10))
    _, left, _ = gravity.crop_position(image, 80, 100, ObjectGravity(None), ctx, "resize")
    assert left <= 10 and 50 <= left + 80  # the smart crop
    assert [(d.reason, d.operation) for d in ctx.degradations] == [
        ("DETECTION_UNAVAILABLE", "resize")
    ]
    assert "TRITON_UNAVAILABLE" in ctx.degradations[0].message
