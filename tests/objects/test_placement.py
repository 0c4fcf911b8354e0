"""Object placement: the gravity modes, weights, objects position and crop_objects' box, as
pure arithmetic on boxes (imagesvc.objects.placement)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from imagesvc.geometry import Box
from imagesvc.objects import placement
from imagesvc.objects.placement import WeightedObject
from imagesvc.options import (
    CENTER,
    ClassWeights,
    CompassGravity,
    FocusPointGravity,
    ProportionalPosition,
)

MODES = ("max_score_area", "one_best", "one_best_centermost")


def obj(left, top, width, height, confidence=0.9, weight=1.0) -> WeightedObject:
    return WeightedObject(Box(left, top, width, height), confidence, weight)


def whole(o: WeightedObject, left: int, top: int, cw: int, ch: int, slack: float = 0.5) -> bool:
    b = o.box
    return (
        b.left >= left - slack
        and b.right <= left + cw + slack
        and b.top >= top - slack
        and b.bottom <= top + ch + slack
    )


def cut(o: WeightedObject, left: int, top: int, cw: int, ch: int) -> bool:
    b = o.box
    overlaps = b.left < left + cw and b.right > left and b.top < top + ch and b.bottom > top
    return overlaps and not whole(o, left, top, cw, ch)


def centred(width, height, cw, ch) -> tuple[int, int]:
    return int((width - cw) / 2 + 0.5), int((height - ch) / 2 + 0.5)


# --- The couple in a 16:9 frame, cropped portrait ----------------------------------------------

# 1600x900, two faces side by side 500 px apart; a 9:16 crop of the full height is 506 px wide.
COUPLE = [obj(500, 200, 160, 200, 0.95), obj(1000, 220, 150, 190, 0.9)]


@pytest.mark.parametrize("mode", MODES)
def test_a_portrait_crop_of_a_couple_keeps_one_face_whole_in_every_mode(mode):
    left, top = placement.place(1600, 900, 506, 900, COUPLE, mode, CENTER)
    kept = [whole(o, left, top, 506, 900) for o in COUPLE]
    assert kept.count(True) == 1
    assert not any(cut(o, left, top, 506, 900) for o in COUPLE)


def test_the_union_centre_would_cut_both_faces_there():
    # What the old object gravity did: centre the window on the union of the faces.
    union = placement.union([o.box for o in COUPLE])
    left = int(union.left + union.width / 2 - 253)
    assert all(cut(o, left, 0, 506, 900) for o in COUPLE)


def test_max_score_area_keeps_the_larger_face_of_two():
    faces = [obj(100, 100, 60, 60), obj(600, 100, 120, 120)]
    left, top = placement.place(900, 400, 300, 400, faces, "max_score_area", CENTER)
    assert whole(faces[1], left, top, 300, 400)


def test_two_faces_outweigh_one_of_the_same_size():
    # A pair close together on the left, one alone on the right; only one side fits.
    faces = [obj(50, 100, 80, 80), obj(150, 100, 80, 80), obj(700, 100, 80, 80)]
    left, top = placement.place(900, 400, 300, 400, faces, "max_score_area", CENTER)
    assert whole(faces[0], left, top, 300, 400) and whole(faces[1], left, top, 300, 400)


def test_one_best_centermost_prefers_the_face_near_the_centre():
    faces = [obj(20, 100, 100, 100), obj(400, 150, 90, 90)]  # image centre (450, 200)
    left, top = placement.place(900, 400, 200, 400, faces, "one_best", CENTER)
    assert whole(faces[0], left, top, 200, 400)
    left, top = placement.place(900, 400, 200, 400, faces, "one_best_centermost", CENTER)
    assert whole(faces[1], left, top, 200, 400)


def test_weights_change_which_object_is_best():
    faces = [obj(20, 100, 100, 100, weight=1.0), obj(700, 100, 50, 50, weight=5.0)]
    left, top = placement.place(900, 400, 200, 400, faces, "one_best", CENTER)
    assert whole(faces[1], left, top, 200, 400)


def test_an_object_larger_than_the_window_is_centred_on():
    faces = [obj(300, 0, 400, 400)]
    left, top = placement.place(1000, 400, 200, 400, faces, "max_score_area", CENTER)
    assert left == 400


# --- Objects position --------------------------------------------------------------------------

FACE = [obj(450, 100, 100, 100)]  # centre (500, 150) in 1000x300; window 300x300


@pytest.mark.parametrize(
    ("position", "expected_left"),
    [
        (CENTER, 350),
        (CompassGravity("west"), 450),  # the face's left edge on the window's
        (CompassGravity("east"), 250),  # its right edge on the window's
        (CompassGravity("west", x_offset=20), 430),
        (CompassGravity("east", x_offset=0.1), 280),  # 10 % of the 300 px window
        (CompassGravity("center", x_offset=30), 380),  # centre moves right
        (FocusPointGravity(0.25, 0.5), 425),  # centre at 75 px of 300
        (ProportionalPosition(), 350),  # at 0.5 of the image: 0.5 of the window
    ],
)
def test_objects_position_places_the_kept_objects(position, expected_left):
    left, top = placement.place(1000, 300, 300, 300, FACE, "max_score_area", position)
    assert (left, top) == (expected_left, 0)


def test_proportional_position_keeps_the_relative_place():
    face = [obj(800, 100, 50, 50)]  # centre x 825 of 1000: 0.825
    left, _ = placement.place(1000, 300, 200, 300, face, "max_score_area", ProportionalPosition())
    assert left + 0.825 * 200 == pytest.approx(825, abs=1)


def test_objects_position_never_pushes_the_kept_objects_out():
    far = CompassGravity("west", x_offset=500)
    left, top = placement.place(1000, 300, 300, 300, FACE, "max_score_area", far)
    assert whole(FACE[0], left, top, 300, 300)
    assert left == 250  # as far as keeping the face allows


def test_the_least_cut_wins_over_the_preferred_position():
    # Centred on the kept face, the window would cut the neighbour; shifted, it clears it.
    faces = [obj(400, 100, 100, 100, 0.95), obj(640, 100, 100, 100, 0.5)]
    left, top = placement.place(1200, 300, 300, 300, faces, "one_best", CENTER)
    assert whole(faces[0], left, top, 300, 300)
    assert not cut(faces[1], left, top, 300, 300)


# --- Properties --------------------------------------------------------------------------------


@st.composite
def scenes(draw):
    width = draw(st.integers(20, 2000))
    height = draw(st.integers(20, 2000))
    cw = draw(st.integers(1, width))
    ch = draw(st.integers(1, height))
    count = draw(st.integers(1, 8))
    objects = []
    for _ in range(count):
        w = draw(st.integers(1, max(1, width // 3)))
        h = draw(st.integers(1, max(1, height // 3)))
        left = draw(st.integers(0, width - w))
        top = draw(st.integers(0, height - h))
        confidence = draw(st.floats(0.3, 1.0))
        objects.append(obj(left, top, w, h, confidence))
    return width, height, cw, ch, objects


@hsettings(max_examples=300, deadline=None)
@given(scene=scenes(), mode=st.sampled_from(MODES))
def test_the_window_always_lies_inside_the_image(scene, mode):
    width, height, cw, ch, objects = scene
    left, top = placement.place(width, height, cw, ch, objects, mode, CENTER)
    assert 0 <= left <= width - cw and 0 <= top <= height - ch


@hsettings(max_examples=300, deadline=None)
@given(scene=scenes())
def test_max_score_area_never_keeps_fewer_whole_objects_than_centre(scene):
    width, height, cw, ch, objects = scene
    left, top = placement.place(width, height, cw, ch, objects, "max_score_area", CENTER)
    c_left, c_top = centred(width, height, cw, ch)
    ours = sum(whole(o, left, top, cw, ch) for o in objects)
    theirs = sum(whole(o, c_left, c_top, cw, ch, slack=0) for o in objects)
    assert ours >= theirs


@hsettings(max_examples=300, deadline=None)
@given(scene=scenes())
def test_objects_that_all_fit_are_all_kept_by_max_score_area(scene):
    width, height, cw, ch, objects = scene
    union = placement.union([o.box for o in objects])
    if union.width > cw or union.height > ch:
        return
    left, top = placement.place(width, height, cw, ch, objects, "max_score_area", CENTER)
    assert all(whole(o, left, top, cw, ch) for o in objects)


@hsettings(max_examples=300, deadline=None)
@given(scene=scenes(), mode=st.sampled_from(("one_best", "one_best_centermost")))
def test_one_best_keeps_its_object_whole_when_it_fits(scene, mode):
    width, height, cw, ch, objects = scene
    best = placement.best_object(objects, mode, width, height)
    if best.box.width > cw or best.box.height > ch:
        return
    left, top = placement.place(width, height, cw, ch, objects, mode, CENTER)
    assert whole(best, left, top, cw, ch)


# --- crop_objects' box -------------------------------------------------------------------------


def test_crop_box_pads_around_the_objects_and_clips():
    faces = [obj(100, 100, 100, 50), obj(300, 120, 50, 50)]  # union 100..350 x 100..170
    assert placement.crop_box(1000, 500, faces, "max_score_area", 1.0) == (100, 100, 250, 70)
    # 1.2: 300 x 84 around the centre (225, 135).
    assert placement.crop_box(1000, 500, faces, "max_score_area", 1.2) == (75, 93, 300, 84)
    assert placement.crop_box(400, 160, faces, "max_score_area", 3.0) == (0, 30, 400, 130)


def test_crop_box_of_the_best_object():
    faces = [obj(100, 100, 100, 50), obj(300, 120, 50, 50)]
    assert placement.crop_box(1000, 500, faces, "one_best", 1.0) == (100, 100, 100, 50)


def test_weights_resolve_request_then_all_then_classes_file():
    weights = ClassWeights((("face", 3.0),), everything=2.0)
    assert weights.weight("face", {"face": 9.0}) == 3.0
    assert weights.weight("hand", {"hand": 9.0}) == 2.0
    assert ClassWeights().weight("hand", {"hand": 9.0}) == 9.0
    assert ClassWeights().weight("hand") == 1.0
