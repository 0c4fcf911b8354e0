"""The generalised MediaPipe SSD maths (inference.ssd): pose and palm anchors, keypoints,
weighted NMS with keypoints, input ranges and the regions MediaPipe derives (no Triton).
BlazeFace's own cases stay in test_blazeface.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.mediapipe_detectors import PALM_DETECTION, PALM_ROI, POSE_DETECTION, POSE_ROI
from inference.ssd import (
    RoiSpec,
    decode_ssd,
    generate_anchors,
    letterbox,
    normalize_radians,
    roi_rects,
    rotated_rect_bounds,
    weighted_nms,
    weighted_nms_with_keypoints,
)

# -- anchors: the counts are the num_boxes of MediaPipe's TensorsToDetectionsCalculator -----


def test_pose_detection_anchor_layout():
    anchors = generate_anchors(POSE_DETECTION)
    assert anchors.shape == (2254, 2) and POSE_DETECTION.num_anchors == 2254
    # Stride 8: 28x28 cells, 2 anchors each (aspect ratio 1 + interpolated): 1568.
    assert np.allclose(anchors[0], anchors[1])
    assert np.allclose(anchors[0], [0.5 / 28, 0.5 / 28])
    assert np.allclose(anchors[2], [1.5 / 28, 0.5 / 28])
    assert np.allclose(anchors[1567], [27.5 / 28, 27.5 / 28])
    # Stride 16: 14x14 cells, 2 each: 392.
    assert np.allclose(anchors[1568], [0.5 / 14, 0.5 / 14])
    assert np.allclose(anchors[1959], [13.5 / 14, 13.5 / 14])
    # Three stride-32 layers share one 7x7 map: 6 per cell, 294.
    assert np.allclose(anchors[1960:1966], [0.5 / 7, 0.5 / 7])
    assert np.allclose(anchors[1966], [1.5 / 7, 0.5 / 7])
    assert np.allclose(anchors[-1], [6.5 / 7, 6.5 / 7])


def test_palm_detection_anchor_layout():
    anchors = generate_anchors(PALM_DETECTION)
    assert anchors.shape == (2016, 2) and PALM_DETECTION.num_anchors == 2016
    # Stride 8: 24x24 cells, 2 each: 1152; three stride-16 layers on 12x12, 6 each: 864.
    assert np.allclose(anchors[1], [0.5 / 24, 0.5 / 24])
    assert np.allclose(anchors[1151], [23.5 / 24, 23.5 / 24])
    assert np.allclose(anchors[1152:1158], [0.5 / 12, 0.5 / 12])
    assert np.allclose(anchors[-1], [11.5 / 12, 11.5 / 12])


def test_coordinates_per_anchor():
    assert (POSE_DETECTION.num_coords, PALM_DETECTION.num_coords) == (12, 18)


# -- input range -------------------------------------------------------------------------


def test_palm_input_is_zero_one_with_black_bars():
    image = np.full((100, 200, 3), 255, np.uint8)
    tensor, box = letterbox(image, 192, PALM_DETECTION.input_range)
    assert (box.pad_x, box.pad_y) == (0, 48)
    assert np.all(tensor[0, :48] == 0.0) and np.all(tensor[0, 144:] == 0.0)
    assert np.allclose(tensor[0, 48:144], 1.0, atol=1e-5)


def test_points_map_back_like_boxes():
    _, box = letterbox(np.zeros((300, 600, 3), np.uint8), 224)
    points = np.array([[[0.25, 0.4], [0.9, 0.6]]])
    as_boxes = box.to_image(points.reshape(1, 4))
    assert np.allclose(box.points_to_image(points).reshape(1, 4), as_boxes)


# -- decoding keypoints -----------------------------------------------------------------


def test_decode_places_keypoints_relative_to_the_anchor():
    count = POSE_DETECTION.num_anchors
    regressors = np.zeros((1, count, 12), np.float32)
    classificators = np.full((1, count, 1), -20.0, np.float32)
    index = 2000
    regressors[0, index, :4] = [0, 0, 22.4, 22.4]
    regressors[0, index, 4:] = [22.4, 0, 0, -44.8, 0, 0, -11.2, 11.2]
    classificators[0, index, 0] = 1.0
    boxes, keypoints, scores = decode_ssd(regressors, classificators, POSE_DETECTION, 0.5)
    anchor = generate_anchors(POSE_DETECTION)[index]
    assert boxes.shape == (1, 4) and keypoints.shape == (1, 4, 2) and len(scores) == 1
    expected = anchor + np.array([[0.1, 0.0], [0.0, -0.2], [0.0, 0.0], [-0.05, 0.05]])
    assert np.allclose(keypoints[0], expected)
    assert np.allclose(boxes[0], [*(anchor - 0.05), *(anchor + 0.05)])


def test_weighted_nms_averages_keypoints_with_the_boxes():
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0], [200, 200, 220, 220]])
    keypoints = np.array([[[1.0, 2.0]], [[3.0, 6.0]], [[9.0, 9.0]]])
    scores = np.array([0.9, 0.6, 0.5])
    merged, merged_kp, merged_scores = weighted_nms_with_keypoints(boxes, keypoints, scores, 0.3)
    plain, plain_scores = weighted_nms(boxes, scores, 0.3)
    assert np.array_equal(merged, plain) and np.array_equal(merged_scores, plain_scores)
    assert np.allclose(merged_kp[0, 0], (np.array([1, 2]) * 0.9 + np.array([3, 6]) * 0.6) / 1.5)
    assert np.allclose(merged_kp[1, 0], [9, 9])
    empty = weighted_nms_with_keypoints(np.zeros((0, 4)), np.zeros((0, 7, 2)), np.zeros(0), 0.3)
    assert [a.shape for a in empty] == [(0, 4), (0, 7, 2), (0,)]


# -- regions of interest --------------------------------------------------------------------


def test_normalize_radians():
    angles = np.array([0.0, math.pi, -math.pi, 3 * math.pi / 2, -3 * math.pi / 2])
    assert np.allclose(
        normalize_radians(angles), [0, -math.pi, -math.pi, -math.pi / 2, math.pi / 2]
    )


def _pose(hip, scale_point):
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]])  # the face box: not used by the alignment
    return boxes, np.array([[hip, scale_point, (0.0, 0.0), (0.0, 0.0)]], np.float64)


def test_upright_person_region_is_a_square_on_the_hips():
    boxes, keypoints = _pose((100.0, 200.0), (100.0, 100.0))  # size point straight above
    ((cx, cy, width, height, rotation),) = roi_rects(boxes, keypoints, POSE_ROI)
    assert (cx, cy, rotation) == pytest.approx((100, 200, 0))
    assert width == height == pytest.approx(2 * 100 * 1.25)
    assert np.allclose(
        rotated_rect_bounds(roi_rects(boxes, keypoints, POSE_ROI)), [[-25, 75, 225, 325]]
    )


def test_a_tilted_person_region_is_bounded_by_its_rotated_corners():
    # Size point up and to the right at 45 degrees: the body leans, the square turns by 45.
    boxes, keypoints = _pose((0.0, 0.0), (30.0, -30.0))
    rect = roi_rects(boxes, keypoints, POSE_ROI)[0]
    side = 2 * math.hypot(30, 30) * 1.25
    assert rect[2] == pytest.approx(side) and rect[4] == pytest.approx(math.pi / 4)
    half = side / 2 * math.sqrt(2)  # a square turned by 45 degrees
    assert np.allclose(rotated_rect_bounds(rect[None]), [[-half, -half, half, half]])


@pytest.mark.parametrize(
    ("wrist", "knuckle", "shift"),
    [((50.0, 200.0), (50.0, 0.0), (0.0, -1.0)), ((200.0, 50.0), (0.0, 50.0), (-1.0, 0.0))],
    ids=["fingers-up", "fingers-left"],
)
def test_hand_region_moves_towards_the_fingers_and_grows(wrist, knuckle, shift):
    box = np.array([[0.0, 0.0, 200.0, 200.0]])
    keypoints = np.zeros((1, 7, 2))
    keypoints[0, 0], keypoints[0, 2] = wrist, knuckle
    cx, cy, width, height, _ = roi_rects(box, keypoints, PALM_ROI)[0]
    # Half the box's height (100 px) towards the fingers; the long side (200) times 2.6.
    assert (cx, cy) == pytest.approx((100 + 100 * shift[0], 100 + 100 * shift[1]))
    assert width == height == pytest.approx(520)


def test_square_long_and_scale_apply_after_the_shift():
    roi = RoiSpec(False, 0, 1, 90.0, scale_x=2.0, scale_y=1.0, shift_x=0.5, square_long=False)
    box = np.array([[0.0, 0.0, 40.0, 10.0]])
    keypoints = np.array([[[0.0, 10.0], [0.0, 0.0]]])  # upright: no rotation
    assert np.allclose(roi_rects(box, keypoints, roi), [[40.0, 5.0, 80.0, 10.0, 0.0]])
