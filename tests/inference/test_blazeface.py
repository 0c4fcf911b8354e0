"""BlazeFace maths: anchors, letterbox, decoding, weighted NMS, merging (no Triton)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from inference import blazeface, export_blazeface, ssd
from inference.blazeface import (
    FULL_RANGE,
    SHORT_RANGE,
    Letterbox,
    clip_boxes,
    decode,
    generate_anchors,
    iou,
    letterbox,
    merge,
    resize_bilinear,
    sigmoid_scores,
    weighted_nms,
)

# -- anchors ---------------------------------------------------------------------------


def test_anchor_counts_match_the_models_outputs():
    assert generate_anchors(SHORT_RANGE).shape == (896, 2)
    assert generate_anchors(FULL_RANGE).shape == (2304, 2)
    assert SHORT_RANGE.num_anchors == 896
    assert FULL_RANGE.num_anchors == 2304


def test_short_range_anchor_layout():
    anchors = generate_anchors(SHORT_RANGE)
    # Stride 8: 16x16 cells, 2 anchors per cell (aspect ratio 1 + interpolated).
    assert np.allclose(anchors[0], anchors[1])
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])  # x varies fastest
    assert np.allclose(anchors[32], [0.5 / 16, 1.5 / 16])
    assert np.allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    # Three stride-16 layers share one 8x8 map: 6 anchors per cell.
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])
    assert np.allclose(anchors[518], [1.5 / 8, 0.5 / 8])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_full_range_anchor_layout():
    anchors = generate_anchors(FULL_RANGE)
    # Stride 4: 48x48 cells, one anchor each (interpolated_scale_aspect_ratio 0).
    assert np.allclose(anchors[0], [0.5 / 48, 0.5 / 48])
    assert np.allclose(anchors[1], [1.5 / 48, 0.5 / 48])
    assert np.allclose(anchors[48], [0.5 / 48, 1.5 / 48])
    assert np.allclose(anchors[-1], [47.5 / 48, 47.5 / 48])
    assert anchors.min() > 0 and anchors.max() < 1


# -- resize and letterbox --------------------------------------------------------------


def test_resize_keeps_a_flat_image_flat():
    flat = np.full((333, 517, 3), 77, np.uint8)
    for width, height in ((192, 124), (128, 83), (600, 700)):
        assert np.allclose(resize_bilinear(flat, width, height), 77, atol=1e-3)


def test_resize_shrink_averages_instead_of_aliasing():
    # A 1-pixel checkerboard shrunk 4x must come out mid-grey, not black or white.
    checker = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = resize_bilinear(np.stack([checker] * 3, axis=-1), 64, 64)
    assert np.allclose(out, 127.5, atol=1.0)


def test_resize_identity_at_the_same_size():
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = resize_bilinear(image, 53, 37)
    assert out.dtype == np.float32 and np.array_equal(out, image)
    # What the shortcut returns is what the filter gives at scale 1 (its taps are the identity).
    pixels = image.astype(np.float32)
    assert np.allclose(ssd._resize_rows(pixels, 37, 37.0), pixels, atol=1e-4)


def test_letterbox_wide_image_gets_bars_above_and_below():
    image = np.full((100, 200, 3), 255, np.uint8)
    tensor, box = letterbox(image, 128)
    assert tensor.shape == (1, 128, 128, 3) and tensor.dtype == np.float32
    assert (box.pad_x, box.pad_y) == (0, 32)
    assert box.scale_x == pytest.approx(128 / 200) and box.scale_y == pytest.approx(64 / 100)
    assert np.all(tensor[0, :32] == -1) and np.all(tensor[0, 96:] == -1)
    assert np.allclose(tensor[0, 32:96], 1.0, atol=1e-5)


def test_letterbox_tall_image_gets_bars_left_and_right():
    image = np.zeros((300, 100, 3), np.uint8)
    tensor, box = letterbox(image, 192)
    assert (box.pad_x, box.pad_y) == (64, 0)
    assert np.allclose(tensor[0, :, 64:128], -1.0)


def test_letterbox_maps_pixel_values_to_minus_one_one():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    tensor, _ = letterbox(image, 64)
    assert tensor.min() == pytest.approx(-1.0) and tensor.max() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(512, 512), (300, 451), (451, 300), (37, 1000), (1, 1)])
def test_letterbox_round_trip(shape):
    image = np.zeros((*shape, 3), np.uint8)
    _, box = letterbox(image, 192)
    height, width = shape
    boxes = np.array(
        [[0, 0, width, height], [0.25 * width, 0.1 * height, 0.5 * width, 0.9 * height]]
    )
    assert np.allclose(box.to_image(box.to_input(boxes)), boxes)
    # The whole image spans the letterboxed content exactly.
    content = box.to_input(boxes[:1])[0] * 192
    assert content[0] == pytest.approx(box.pad_x) and content[1] == pytest.approx(box.pad_y)
    assert content[2] - content[0] == pytest.approx(width * box.scale_x)


def test_letterbox_content_lands_where_to_input_says():
    # A bright square in a wide image must appear in the tensor where `to_input` maps it.
    image = np.zeros((200, 400, 3), np.uint8)
    image[50:150, 100:200] = 255
    tensor, box = letterbox(image, 128)
    x0, y0, x1, y1 = box.to_input(np.array([[100, 50, 200, 150]]))[0] * 128
    inside = tensor[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
    assert np.allclose(inside, 1.0, atol=1e-4)
    assert tensor[0, int(y0) - 3, int(x0) - 3].max() < -0.99


def test_uint8_letterbox_is_the_float_one_in_pixels():
    # The face models take pixels (their graph maps them onto [-1, 1]): bars 0, an image at the
    # input's size unchanged, a resampled one rounded from what the float letterbox computes.
    rng = np.random.default_rng(5)
    at_size = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    pixels, box = letterbox(at_size, 128, dtype="UINT8")
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 128, 128, 3)
    assert (box.pad_x, box.pad_y) == (0, 16)
    assert np.array_equal(pixels[0, 16:112], at_size)
    assert not pixels[0, :16].any() and not pixels[0, 112:].any()
    larger = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    pixels, box = letterbox(larger, 192, dtype="UINT8")
    floats, same = letterbox(larger, 192)
    assert box == same
    mapped = export_blazeface.model_range(pixels)
    # Rounding to a pixel moves a value by at most half a step of 2/255.
    assert np.abs(mapped - floats).max() <= 1 / 255 + 1e-6
    assert np.abs(mapped - floats).max() > 0  # resampled values were rounded
    with pytest.raises(ValueError):
        letterbox(larger, 192, dtype="FP16")


def test_model_range_is_the_float_letterboxs_mapping():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    floats, _ = letterbox(pixels[0], 16)
    assert np.array_equal(export_blazeface.model_range(pixels), floats)
    assert export_blazeface.model_range(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]


def test_letterbox_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        letterbox(np.zeros((10, 10), np.uint8), 128)
    with pytest.raises(ValueError):
        letterbox(np.zeros((10, 10, 3), np.float32), 128)
    with pytest.raises(ValueError):
        letterbox(np.zeros((0, 10, 3), np.uint8), 128)


# -- decoding --------------------------------------------------------------------------


def _raw_outputs(variant, logit=-20.0):
    count = variant.num_anchors
    return np.zeros((1, count, 16), np.float32), np.full((1, count, 1), logit, np.float32)


def test_decode_places_a_box_relative_to_its_anchor():
    regressors, classificators = _raw_outputs(SHORT_RANGE)
    anchors = generate_anchors(SHORT_RANGE)
    index = 600
    # Centre 8 px right and 4 px below the anchor, 32x16 px, in 128-px input units.
    regressors[0, index, :4] = [8, 4, 32, 16]
    classificators[0, index, 0] = 2.0
    boxes, scores = decode(regressors, classificators, SHORT_RANGE, score_threshold=0.5)
    assert boxes.shape == (1, 4)
    cx, cy = anchors[index] + np.array([8, 4]) / 128
    assert np.allclose(boxes[0], [cx - 16 / 128, cy - 8 / 128, cx + 16 / 128, cy + 8 / 128])
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_decode_applies_the_threshold_and_drops_empty_boxes():
    regressors, classificators = _raw_outputs(FULL_RANGE)
    regressors[0, :3, 2:4] = 10.0
    classificators[0, 0, 0] = 0.1  # score 0.525: kept at 0.5
    classificators[0, 1, 0] = -0.1  # score 0.475: dropped
    classificators[0, 2, 0] = 5.0
    regressors[0, 2, 2] = 0.0  # zero width: dropped even with a high score
    boxes, scores = decode(regressors, classificators, FULL_RANGE, score_threshold=0.5)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.52497918)


def test_decode_rejects_outputs_of_the_other_model():
    regressors, classificators = _raw_outputs(FULL_RANGE)
    with pytest.raises(ValueError, match="896 anchors"):
        decode(regressors, classificators, SHORT_RANGE, 0.5)


def test_scores_are_clipped_like_mediapipe_without_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = sigmoid_scores(np.array([-1e6, -100.0, 0.0, 100.0, 1e6], np.float32))
    assert scores[0] == scores[1] == pytest.approx(1 / (1 + np.exp(100.0)))
    assert scores[2] == 0.5 and scores[3] == scores[4] == pytest.approx(1.0)


# -- weighted NMS ----------------------------------------------------------------------


def test_iou():
    box = np.array([0.0, 0.0, 2.0, 2.0])
    others = np.array(
        [[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 1.0, 1.0]]
    )
    assert np.allclose(iou(box, others), [1.0, 1 / 3, 0.0, 0.0])


def test_weighted_nms_merges_overlapping_boxes_by_score():
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0]])
    scores = np.array([0.9, 0.6])
    merged, merged_scores = weighted_nms(boxes, scores, iou_threshold=0.3)
    assert merged.shape == (1, 4)
    assert np.allclose(merged[0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5)
    assert merged_scores[0] == pytest.approx(0.9)  # keeps the best score, as MediaPipe


def test_weighted_nms_keeps_separate_boxes_best_first():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0], [1.0, 0.0, 11.0, 10.0]])
    scores = np.array([0.7, 0.95, 0.6])
    merged, merged_scores = weighted_nms(boxes, scores, iou_threshold=0.3)
    assert np.allclose(merged_scores, [0.95, 0.7])
    assert np.allclose(merged[0], boxes[1])
    assert np.allclose(merged[1], (boxes[0] * 0.7 + boxes[2] * 0.6) / 1.3)


def test_weighted_nms_threshold_is_strict():
    # IoU exactly 1/3 with threshold 1/3: not "above", so both stay.
    boxes = np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]])
    merged, _ = weighted_nms(boxes, np.array([0.9, 0.8]), iou_threshold=1 / 3 + 1e-12)
    assert len(merged) == 2


def test_weighted_nms_of_nothing():
    merged, scores = weighted_nms(np.zeros((0, 4)), np.zeros((0,)), 0.3)
    assert merged.shape == (0, 4) and scores.shape == (0,)


def test_merge_unions_models_before_nms():
    short = (np.array([[100.0, 100.0, 200.0, 200.0]]), np.array([0.8]))
    full = (
        np.array([[104.0, 98.0, 204.0, 198.0], [400.0, 10.0, 420.0, 30.0]]),
        np.array([0.9, 0.7]),
    )
    boxes, scores = merge([short, full], iou_threshold=0.3)
    assert np.allclose(scores, [0.9, 0.7])
    assert np.allclose(boxes[0], (short[0][0] * 0.8 + full[0][0] * 0.9) / 1.7)
    assert np.allclose(boxes[1], full[0][1])
    assert merge([], 0.3)[0].shape == (0, 4)


def test_clip_boxes():
    clipped = clip_boxes(np.array([[-5.0, -1.0, 50.0, 300.0]]), width=40, height=200)
    assert np.allclose(clipped, [[0, 0, 40, 200]])


# -- end to end, without a model ---------------------------------------------------------


def test_a_box_decoded_from_the_letterbox_maps_back_to_image_pixels():
    # A 300x600 (h x w) image; a face at x 400..460, y 100..160 in pixels.
    image = np.zeros((300, 600, 3), np.uint8)
    _, box = letterbox(image, SHORT_RANGE.input_size)
    face = np.array([[400.0, 100.0, 460.0, 160.0]])
    x0, y0, x1, y1 = box.to_input(face)[0]
    anchors = generate_anchors(SHORT_RANGE)
    index = int(np.argmin(np.hypot(anchors[:, 0] - (x0 + x1) / 2, anchors[:, 1] - (y0 + y1) / 2)))
    regressors, classificators = _raw_outputs(SHORT_RANGE)
    size = SHORT_RANGE.input_size
    regressors[0, index, :4] = [
        ((x0 + x1) / 2 - anchors[index, 0]) * size,
        ((y0 + y1) / 2 - anchors[index, 1]) * size,
        (x1 - x0) * size,
        (y1 - y0) * size,
    ]
    classificators[0, index, 0] = 3.0
    boxes, _ = decode(regressors, classificators, SHORT_RANGE, 0.5)
    assert np.allclose(box.to_image(boxes), face, atol=1e-3)


def test_letterbox_is_a_frozen_value():
    box = Letterbox(128, 10, 10, 12.8, 12.8, 0, 0)
    with pytest.raises(AttributeError):
        box.pad_x = 3  # type: ignore[misc]
    assert blazeface.INPUT_NAME == "input"
