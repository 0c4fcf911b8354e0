"""blur_detections: pixels inside the detected boxes are blurred, everything else is identical."""

from __future__ import annotations

import numpy as np

from tests.images import from_array, textured, to_array
from imagesvc.context import DetectedObject
from imagesvc.geometry import Affine, Box
from imagesvc.ops import blur_detections
from imagesvc.ops.blur_detections import BlurDetectionsOptions
from imagesvc.v1 import image_service_pb2 as pb

W, H = 120, 80


def changed_region(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def box_mask(left: int, top: int, right: int, bottom: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top:bottom, left:right] = True
    return mask


def detail(array: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: high for sharp texture."""
    return float(np.abs(np.diff(array.astype(int), axis=1)).mean())


def test_only_the_box_is_blurred(make_ctx):
    source = textured(W, H)
    # Fractional box: covered outwards, to 30..70 x 20..50.
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(30.4, 20.6, 39.2, 29.1))])
    out = to_array(blur_detections.run(from_array(source), BlurDetectionsOptions(4.0, None), ctx))
    inside = box_mask(30, 20, 70, 50)
    assert (out[~inside] == source[~inside]).all()
    changed = changed_region(source, out)
    assert changed[inside].mean() > 0.5
    # The partly covered last column and row are blurred too.
    assert changed[20:50, 69].mean() > 0.5 and changed[49, 30:70].mean() > 0.5
    assert detail(out[20:50, 30:70]) < 0.5 * detail(source[20:50, 30:70])
    assert ctx.degradations == []


def test_classes_filter_the_boxes(make_ctx):
    source = textured(W, H)
    objects = [
        DetectedObject("face", 0.9, Box(5, 5, 20, 20)),
        DetectedObject("person", 0.9, Box(60, 30, 40, 40)),
    ]
    ctx = make_ctx(W, H, objects=objects)
    out = to_array(
        blur_detections.run(
            from_array(source), BlurDetectionsOptions(3, frozenset({"person"})), ctx
        )
    )
    changed = changed_region(source, out)
    assert not changed[5:25, 5:25].any()
    assert changed[30:70, 60:100].mean() > 0.5
    assert not changed[~box_mask(60, 30, 100, 70)].any()


def test_boxes_follow_the_transform_and_are_clipped(make_ctx):
    # Detections are in source pixels of a 240x160 source; the current image is half size and
    # the second box hangs over its right edge.
    objects = [
        DetectedObject("face", 0.9, Box(20, 20, 40, 40)),  # -> 10..30 x 10..30
        DetectedObject("face", 0.9, Box(200, 100, 80, 40)),  # -> 100..120 x 50..70 (clipped)
    ]
    ctx = make_ctx(240, 160, objects=objects)
    ctx.transform = Affine.scale(0.5, 0.5)
    source = textured(W, H)
    out = to_array(blur_detections.run(from_array(source), BlurDetectionsOptions(3, None), ctx))
    inside = box_mask(10, 10, 30, 30) | box_mask(100, 50, 120, 70)
    assert (out[~inside] == source[~inside]).all()
    changed = changed_region(source, out)
    assert changed[10:30, 10:30].mean() > 0.5 and changed[50:70, 100:120].mean() > 0.5


def test_detection_failure_skips_with_a_degradation(make_ctx):
    image = from_array(textured(W, H))
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    assert blur_detections.run(image, BlurDetectionsOptions(3, None), ctx) is image
    assert [(d.reason, d.operation) for d in ctx.degradations] == [
        ("DETECTION_UNAVAILABLE", "blur_detections")
    ]


def test_nothing_detected_leaves_the_image(make_ctx):
    image = from_array(textured(W, H))
    ctx = make_ctx(W, H, objects=[])
    assert blur_detections.run(image, BlurDetectionsOptions(3, None), ctx) is image
    assert ctx.degradations == []


def test_parse(pctx):
    opts = blur_detections.parse(pb.BlurDetections(sigma=5, classes=["Face "]), "b", pctx)
    assert opts == BlurDetectionsOptions(5, frozenset({"face"}))
    assert blur_detections.needs_detections(opts)
    blur_detections.parse(pb.BlurDetections(sigma=0, classes=["cat"]), "p.blur_detections", pctx)
    assert [v.field for v in pctx.violations.items] == [
        "p.blur_detections.sigma",
        "p.blur_detections.classes[0]",
    ]
