"""pixelate_detections: blocks inside the detected boxes, everything else identical."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, textured, to_array
from imagesvc.context import DetectedObject
from imagesvc.errors import DetectionUnavailable
from imagesvc.geometry import Box
from imagesvc.ops import pixelate_detections
from imagesvc.ops.detection_regions import OnDetectionUnavailable
from imagesvc.ops.pixelate_detections import PixelateDetectionsOptions
from imagesvc.v1 import image_service_pb2 as pb

W, H = 120, 80
FAIL = OnDetectionUnavailable.FAIL
OBSCURE = OnDetectionUnavailable.OBSCURE_WHOLE_IMAGE
SKIP = OnDetectionUnavailable.SKIP


def assert_blocks(array: np.ndarray, size: int) -> None:
    """Every size x size block (aligned to the top-left corner) is one flat colour."""
    height, width = array.shape[:2]
    for top in range(0, height, size):
        for left in range(0, width, size):
            block = array[top : top + size, left : left + size]
            assert (block == block[0, 0]).all(), (left, top)


def test_box_is_pixelated_and_the_rest_identical(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(33, 21, 40, 30))])
    out = to_array(
        pixelate_detections.run(from_array(source), PixelateDetectionsOptions(6, None), ctx)
    )
    inside = np.zeros((H, W), bool)
    inside[21:51, 33:73] = True
    assert (out[~inside] == source[~inside]).all()
    region = out[21:51, 33:73].astype(int)
    assert_blocks(region, 6)  # blocks are aligned to the box's corner
    assert (region[0, 0] != region[0, 6]).any() or (region[0, 0] != region[6, 0]).any()
    assert not np.array_equal(region, source[21:51, 33:73])


def test_class_filter_and_failure(make_ctx):
    source = textured(W, H)
    image = from_array(source)
    ctx = make_ctx(W, H, objects=[DetectedObject("person", 0.9, Box(0, 0, 50, 50))])
    out = pixelate_detections.run(image, PixelateDetectionsOptions(8, frozenset({"face"})), ctx)
    assert np.array_equal(to_array(out), source)
    failed = make_ctx(W, H, objects=[], detection_failure="TRITON_TIMEOUT")
    skipped = pixelate_detections.run(image, PixelateDetectionsOptions(8, None, SKIP), failed)
    assert np.array_equal(to_array(skipped), source)  # the faces stay visible, as asked
    assert [(d.reason, d.operation) for d in failed.degradations] == [
        ("DETECTION_UNAVAILABLE", "pixelate_detections")
    ]
    assert "skipped" in failed.degradations[0].message


@pytest.mark.parametrize("policy", [None, FAIL])
def test_detection_failure_fails_by_default(make_ctx, settings, policy):
    opts = (
        PixelateDetectionsOptions(8, None)
        if policy is None
        else PixelateDetectionsOptions(8, None, policy)
    )
    ctx = make_ctx(W, H, objects=[], detection_failure="MODEL_NOT_READY")
    with pytest.raises(DetectionUnavailable) as caught:
        pixelate_detections.run(from_array(textured(W, H)), opts, ctx)
    error = caught.value
    assert (error.code.name, error.reason) == ("UNAVAILABLE", "DETECTION_UNAVAILABLE")
    assert error.retry_after_s == settings.triton_retry_after_s
    assert error.metadata["operation"] == "pixelate_detections"
    assert "MODEL_NOT_READY" in error.message
    assert ctx.degradations == []


def test_detection_failure_pixelates_the_whole_image_when_asked(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    out = to_array(
        pixelate_detections.run(
            from_array(source), PixelateDetectionsOptions(8, None, OBSCURE), ctx
        )
    )
    assert out.shape == source.shape
    assert_blocks(out, 8)  # the whole image, face region included, is 8 px blocks
    assert not np.array_equal(out[20:50, 30:70], source[20:50, 30:70])
    [degradation] = ctx.degradations
    assert (degradation.reason, degradation.operation) == (
        "DETECTION_UNAVAILABLE",
        "pixelate_detections",
    )
    assert "whole image was pixelated" in degradation.message


def test_parse(pctx):
    opts = pixelate_detections.parse(pb.PixelateDetections(size=10), "p", pctx)
    assert opts == PixelateDetectionsOptions(10, None, FAIL)
    skip = pb.PixelateDetections(
        size=10, on_detection_unavailable=pb.DETECTION_UNAVAILABLE_POLICY_SKIP
    )
    assert pixelate_detections.parse(skip, "p", pctx).on_unavailable is SKIP
    obscure = pb.PixelateDetections(
        size=10, on_detection_unavailable=pb.DETECTION_UNAVAILABLE_POLICY_OBSCURE_WHOLE_IMAGE
    )
    assert pixelate_detections.parse(obscure, "p", pctx).on_unavailable is OBSCURE
    pixelate_detections.parse(
        pb.PixelateDetections(size=1, classes=["face", "dog"]), "p.pixelate_detections", pctx
    )
    assert [v.field for v in pctx.violations.items] == [
        "p.pixelate_detections.size",
        "p.pixelate_detections.classes[1]",
    ]
