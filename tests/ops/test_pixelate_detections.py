"""pixelate_detections: blocks inside the detected boxes, everything else identical."""

from __future__ import annotations

import numpy as np

from tests.images import from_array, textured, to_array
from imagesvc.context import DetectedObject
from imagesvc.geometry import Box
from imagesvc.ops import pixelate_detections
from imagesvc.ops.pixelate_detections import PixelateDetectionsOptions
from imagesvc.v1 import image_service_pb2 as pb

W, H = 120, 80


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
    # Blocks are aligned to the box's corner.
    for top in range(0, 30, 6):
        for left in range(0, 40, 6):
            block = region[top : top + 6, left : left + 6]
            assert (block == block[0, 0]).all(), (left, top)
    assert (region[0, 0] != region[0, 6]).any() or (region[0, 0] != region[6, 0]).any()
    assert not np.array_equal(region, source[21:51, 33:73])


def test_class_filter_and_failure(make_ctx):
    source = textured(W, H)
    image = from_array(source)
    ctx = make_ctx(W, H, objects=[DetectedObject("person", 0.9, Box(0, 0, 50, 50))])
    out = pixelate_detections.run(image, PixelateDetectionsOptions(8, frozenset({"face"})), ctx)
    assert np.array_equal(to_array(out), source)
    failed = make_ctx(W, H, objects=[], detection_failure="TRITON_TIMEOUT")
    assert pixelate_detections.run(image, PixelateDetectionsOptions(8, None), failed) is image
    assert [(d.reason, d.operation) for d in failed.degradations] == [
        ("DETECTION_UNAVAILABLE", "pixelate_detections")
    ]


def test_parse(pctx):
    opts = pixelate_detections.parse(pb.PixelateDetections(size=10), "p", pctx)
    assert opts == PixelateDetectionsOptions(10, None)
    pixelate_detections.parse(
        pb.PixelateDetections(size=1, classes=["face", "dog"]), "p.pixelate_detections", pctx
    )
    assert [v.field for v in pctx.violations.items] == [
        "p.pixelate_detections.size",
        "p.pixelate_detections.classes[1]",
    ]
