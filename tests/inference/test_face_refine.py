"""inference/face_refine.py: thresholds, the tiling plan and rule, tile edges, group boxes."""

from __future__ import annotations

import numpy as np
import pytest

from inference import face_refine
from inference.face_refine import (
    Tile,
    drop_tile_edge_boxes,
    needs_tiled_pass,
    plan_tiles,
    score_threshold,
    suppress_group_boxes,
    tile_to_image,
    tiled_input_side,
)


def test_per_model_thresholds_and_the_default_for_other_models():
    thresholds = {"blazeface_short_range": 0.6, "blazeface_full_range": 0.5}
    assert score_threshold("blazeface_short_range", 0.5, thresholds) == 0.6
    assert score_threshold("blazeface_full_range", 0.9, thresholds) == 0.5
    assert score_threshold("pose_detection", 0.45, thresholds) == 0.45


def _covered(tiles: list[Tile], width: int, height: int) -> np.ndarray:
    seen = np.zeros((height, width), dtype=int)
    for t in tiles:
        seen[t.top : t.bottom, t.left : t.right] += 1
    return seen


@pytest.mark.parametrize(
    ("width", "height", "grid", "cols", "rows"),
    [(2048, 1482, (4, 3), 4, 3), (1482, 2048, (4, 3), 3, 4), (1024, 768, (2, 2), 2, 2)],
)
def test_tiles_cover_the_image_with_the_grid_turned_to_its_orientation(
    width, height, grid, cols, rows
):
    tiles = plan_tiles(width, height, grid, overlap=0.25)
    assert len(tiles) == cols * rows
    assert len({t.left for t in tiles}) == cols and len({t.top for t in tiles}) == rows
    assert (_covered(tiles, width, height) >= 1).all()
    for t in tiles:
        assert 0 <= t.left < t.right <= width and 0 <= t.top < t.bottom <= height


def test_neighbouring_tiles_share_the_overlap():
    tiles = plan_tiles(1000, 400, (2, 1), overlap=0.25)
    assert len(tiles) == 2  # 1000 wide, 400 tall: each tile ~572 x 400, not too long
    left, right = tiles
    assert left.left == 0 and right.right == 1000
    shared = left.right - right.left
    assert shared == pytest.approx(0.25 * left.width, abs=1)


def test_a_long_strip_gets_more_tiles_to_stay_roughly_square():
    tiles = plan_tiles(3000, 500, (2, 1), overlap=0.2)
    assert all(t.width <= 1.5 * t.height for t in tiles)
    assert (_covered(tiles, 3000, 500) >= 1).all()


@pytest.mark.parametrize(
    ("width", "height"), [(2048, 683), (2048, 341), (2048, 64), (2048, 2), (1, 2048), (800, 1)]
)
def test_a_panorama_or_a_strip_gets_at_most_max_tiles(width, height):
    # Growing the long side's count until tiles are square gave 21 tiles at 3:1, 210 for a
    # 2048x64 input and 6144 for 2048x2: each a Triton request and a 442 KB tensor.
    tiles = plan_tiles(width, height)
    assert len(tiles) <= face_refine.MAX_TILES
    assert (_covered(tiles, width, height) >= 1).all()
    assert len(set(tiles)) == len(tiles)


def test_the_other_side_gets_fewer_tiles_before_the_tiles_stay_long():
    # 2048x683: 5 x 3 tiles would still be too wide (512 x 274), 7 x 3 too many: 5 x 2.
    tiles = plan_tiles(2048, 683)
    assert (len({t.left for t in tiles}), len({t.top for t in tiles})) == (5, 2)
    assert all(t.width <= 1.5 * t.height for t in tiles)
    # A strip: one row, MAX_TILES long tiles.
    strip = plan_tiles(2048, 64)
    assert {t.top for t in strip} == {0} and len(strip) == face_refine.MAX_TILES
    # Photos keep the grid: 4 x 3 at 4:3, 3:2 and 16:9.
    for height in (1536, 1365, 1152):
        assert len(plan_tiles(2048, height)) == 12


def test_one_tile_per_side_is_the_whole_image():
    assert plan_tiles(300, 200, (1, 1)) == [Tile(0, 0, 300, 200)]


@pytest.mark.parametrize("overlap", [-0.1, 0.5, 0.9])
def test_plan_refuses_bad_overlap(overlap):
    with pytest.raises(ValueError):
        plan_tiles(100, 100, (2, 2), overlap)


def test_tiled_pass_rule():
    hints = face_refine.MIN_FACE_HINTS
    # A large source where the first pass found only small faces: tile, hints or not.
    assert needs_tiled_pass(3000, 512, [14.0, 22.5])
    assert needs_tiled_pass(3000, 512, [14.0, 22.5], face_hints=0)
    # One face large enough at the detector input: the frame is not a crowd shot.
    assert not needs_tiled_pass(3000, 512, [14.0, 40.0])
    assert not needs_tiled_pass(3000, 512, [14.0, 40.0], face_hints=hints + 10)
    # No face found: the hints decide. A crowd too small for the first pass gives many...
    assert needs_tiled_pass(3000, 512, [], face_hints=hints)
    assert needs_tiled_pass(3000, 512, [], face_hints=hints + 7)
    # ... a face-free photo (a texture, a landscape, a product) few or none: no tiles.
    assert not needs_tiled_pass(3000, 512, [], face_hints=0)
    assert not needs_tiled_pass(3000, 512, [], face_hints=hints - 1)
    assert not needs_tiled_pass(3000, 512, [], face_hints=1, min_hints=2)
    # No hints looked for (a detector without them): the rule before hints, tile.
    assert needs_tiled_pass(3000, 512, [])
    # The source has no pixels beyond the first pass's input: tiles would only upscale.
    assert not needs_tiled_pass(700, 512, [])
    assert not needs_tiled_pass(700, 512, [], face_hints=hints + 10)
    assert not needs_tiled_pass(700, 512, [14.0])
    assert needs_tiled_pass(768, 512, [])  # exactly 1.5 x
    assert needs_tiled_pass(768, 512, [], face_hints=hints)


def test_face_hints_are_looked_for_only_when_they_decide():
    # No face found on a source large enough to tile: the hints decide.
    assert face_refine.needs_face_hints(3000, 512, [])
    assert face_refine.needs_face_hints(768, 512, [])
    # A face found decides without them (large: no tiles; small: tiles) ...
    assert not face_refine.needs_face_hints(3000, 512, [14.0])
    assert not face_refine.needs_face_hints(3000, 512, [120.0])
    # ... and so does a source too small to tile.
    assert not face_refine.needs_face_hints(700, 512, [])


def test_the_measured_hint_constants():
    # bench/README.md "Detection": the full-range model on 2x2 tiles of the 512 px input, boxes
    # at its own threshold; Solvay gives 10, any face-free photo of the set at most 2.
    assert face_refine.HINT_GRID == (2, 2)
    assert (
        face_refine.HINT_SCORE_THRESHOLD
        == face_refine.MODEL_SCORE_THRESHOLDS["blazeface_full_range"]
    )
    assert face_refine.MIN_FACE_HINTS == 3
    # Four tiles of a 512x370 input, each about 293x212: the model sees it at 0.66, not 0.375.
    tiles = plan_tiles(512, 370, face_refine.HINT_GRID)
    assert len(tiles) == 4
    assert {(t.width, t.height) for t in tiles} == {(293, 212)}


def test_tiled_input_never_exceeds_the_source():
    assert tiled_input_side(3000) == face_refine.TILED_INPUT_SIDE
    assert tiled_input_side(1080, 2048) == 1080


def test_boxes_touching_an_inner_tile_edge_are_dropped_those_on_image_edges_kept():
    # A tile in the middle column of the top row of a 1000 x 1000 image.
    tile = Tile(300, 0, 700, 400)
    boxes = np.array(
        [
            [0.0, 100, 40, 140],  # touches the tile's left edge (inner): dropped
            [100, 0, 140, 40],  # touches the top edge, which is the image's: kept
            [360, 100, 400, 140],  # touches the right edge (inner): dropped
            [100, 370, 140, 400],  # touches the bottom edge (inner): dropped
            [100, 100, 140, 140],  # inside: kept
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    kept, kept_scores = drop_tile_edge_boxes(boxes, scores, tile, 1000, 1000)
    assert kept_scores.tolist() == [0.8, 0.5]
    assert kept.tolist() == [[100, 0, 140, 40], [100, 100, 140, 140]]


def test_tile_boxes_map_back_to_the_first_pass_image():
    # Tiled input twice the first pass's size; tile at (600, 200) of it.
    boxes = np.array([[10.0, 20, 50, 60]])
    mapped = tile_to_image(boxes, Tile(600, 200, 900, 500), 2.0, 2.0)
    assert mapped.tolist() == [[305.0, 110.0, 325.0, 130.0]]


def test_a_box_around_two_better_faces_is_suppressed():
    boxes = np.array(
        [
            [100.0, 100, 140, 140],  # face A
            [150.0, 100, 190, 140],  # face B, beside A
            [90.0, 80, 200, 190],  # the low-resolution view of both: a group box
            [400.0, 100, 440, 140],  # a face elsewhere
        ]
    )
    scores = np.array([0.9, 0.85, 0.6, 0.7])
    kept, kept_scores = suppress_group_boxes(boxes, scores)
    assert kept_scores.tolist() == [0.9, 0.85, 0.7]
    assert [b[0] for b in kept] == [100.0, 150.0, 400.0]


def test_a_large_face_around_one_smaller_box_is_kept_and_so_is_a_better_group_box():
    # Contains only one better box: an eye or a mouth box inside a face, not a group.
    boxes = np.array([[100.0, 100, 140, 140], [80.0, 80, 200, 200]])
    _, scores = suppress_group_boxes(boxes, np.array([0.9, 0.6]))
    assert scores.tolist() == [0.9, 0.6]
    # A box scored above the boxes it contains is checked before them: it stays.
    boxes = np.array([[100.0, 100, 140, 140], [150.0, 100, 190, 140], [90.0, 80, 200, 190]])
    _, scores = suppress_group_boxes(boxes, np.array([0.6, 0.55, 0.95]))
    assert scores.tolist() == [0.95, 0.6, 0.55]


def test_group_suppression_of_nothing():
    boxes, scores = suppress_group_boxes(np.zeros((0, 4)), np.zeros(0))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


# --- tiled_faces_visible -----------------------------------------------------------------------


def test_tiled_faces_are_visible_in_a_large_output_and_not_in_a_thumbnail():
    # 4000 px source, 512 px first input: a 20 px face there is 156 px in the source.
    assert face_refine.tiled_faces_visible(4000, 512, output_scale=1.0)
    assert face_refine.tiled_faces_visible(4000, 512, output_scale=0.25)  # 39 px
    assert not face_refine.tiled_faces_visible(4000, 512, output_scale=256 / 3000)  # 13 px


def test_tiled_faces_visible_turns_at_the_minimum_output_face():
    input_scale = 512 / 4000
    at_threshold = face_refine.MIN_OUTPUT_FACE_PX / face_refine.FIRST_PASS_MIN_FACE_PX * input_scale
    assert face_refine.tiled_faces_visible(4000, 512, at_threshold * 1.001)
    assert not face_refine.tiled_faces_visible(4000, 512, at_threshold * 0.999)


def test_tiled_faces_visible_says_yes_when_it_cannot_tell():
    assert face_refine.tiled_faces_visible(0, 512, 0.01)
    assert face_refine.tiled_faces_visible(4000, 0, 0.01)


def test_on_a_source_too_small_to_tile_visibility_counts_faces_up_to_large():
    # 640 px source, 512 px input: the input's own tiles may add faces up to LARGE_FACE_PX
    # (40 px there, 50 px in the source), not only those under FIRST_PASS_MIN_FACE_PX.
    scale_256 = 256 / 480  # a 256 px fill of a 640x480 photo: 27 px for such a face
    assert face_refine.tiled_faces_visible(640, 512, scale_256)
    assert not face_refine.tiled_faces_visible(640, 512, scale_256, first_pass_min_face_px=20.0)
    at_threshold = face_refine.MIN_OUTPUT_FACE_PX / face_refine.LARGE_FACE_PX * 512 / 640
    assert face_refine.tiled_faces_visible(640, 512, at_threshold * 1.001)
    assert not face_refine.tiled_faces_visible(640, 512, at_threshold * 0.999)


# --- needs_input_tiles ---------------------------------------------------------------------------


def test_input_tiles_stand_in_for_the_tiled_pass_on_a_source_too_small_for_it():
    # 640 px: under 1.5 x 512, no larger copy; the first pass found nothing or only small faces.
    assert face_refine.needs_input_tiles(640, 512, [])
    assert face_refine.needs_input_tiles(640, 512, [25.0])
    # A large face: no.
    assert not face_refine.needs_input_tiles(640, 512, [25.0, face_refine.LARGE_FACE_PX])
    # Large enough for the tiled pass proper (the face hints decide there): no.
    assert not face_refine.needs_input_tiles(int(1.5 * 512), 512, [])
    # An input whose 2x2 tiles would be under the model's 192 px: no.
    assert face_refine.needs_input_tiles(384, 384, [])
    assert not face_refine.needs_input_tiles(383, 383, [])


def test_rule_terms_state_face_heights_at_the_nominal_first_input():
    # A camera-size source decoded to a 306 px input: its faces are measured as at 512.
    sides, heights = face_refine.rule_terms(2448, 306, 512, [24.0, 12.0])
    assert sides == (2448, 512)
    assert heights == pytest.approx([40.16, 20.08], abs=0.01)
    # ... so a face large at the coarse input is large for the rule, as at 512.
    assert not face_refine.needs_tiled_pass(*sides, heights, face_hints=0)
    assert face_refine.needs_tiled_pass(*sides, [h / 2 for h in heights], face_hints=0)
    # A source under the max side is its own nominal input; an input at the nominal side
    # keeps its heights.
    assert face_refine.rule_terms(400, 400, 512, [30.0]) == ((400, 400), [30.0])
    assert face_refine.rule_terms(1024, 512, 512, [30.0]) == ((1024, 512), [30.0])
