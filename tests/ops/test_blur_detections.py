"""blur_detections: pixels inside the detected boxes are blurred, everything else is identical."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, textured, to_array
from imagesvc.context import DetectedObject
from imagesvc.errors import DetectionUnavailable
from imagesvc.geometry import Affine, Box
from imagesvc.ops import blur_detections
from imagesvc.ops.blur_detections import BlurDetectionsOptions
from imagesvc.ops.detection_regions import OnDetectionUnavailable
from imagesvc.v1 import image_service_pb2 as pb

FAIL = OnDetectionUnavailable.FAIL
OBSCURE = OnDetectionUnavailable.OBSCURE_WHOLE_IMAGE
SKIP = OnDetectionUnavailable.SKIP

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


def test_detection_failure_fails_by_default(make_ctx, settings):
    image = from_array(textured(W, H))
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    with pytest.raises(DetectionUnavailable) as caught:
        blur_detections.run(image, BlurDetectionsOptions(3, None), ctx)
    error = caught.value
    assert error.reason == "DETECTION_UNAVAILABLE"
    assert error.code.name == "UNAVAILABLE"
    assert error.retry_after_s == settings.triton_retry_after_s
    assert error.metadata == {
        "operation": "blur_detections",
        "detection_failure": "TRITON_UNAVAILABLE",
    }
    assert ctx.degradations == []


def test_detection_failure_fails_when_asked_to_explicitly(make_ctx):
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_CIRCUIT_OPEN")
    with pytest.raises(DetectionUnavailable, match="TRITON_CIRCUIT_OPEN"):
        blur_detections.run(from_array(textured(W, H)), BlurDetectionsOptions(3, None, FAIL), ctx)


def test_detection_failure_blurs_the_whole_image_when_asked(make_ctx):
    source = textured(W, H)
    # The face the detector would have found: with detection down it must not stay sharp.
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_TIMEOUT")
    out = to_array(
        blur_detections.run(from_array(source), BlurDetectionsOptions(4, None, OBSCURE), ctx)
    )
    assert out.shape == source.shape
    assert changed_region(source, out).mean() > 0.9
    for region in (np.s_[20:50, 30:70], np.s_[:, :], np.s_[0:20, 0:20], np.s_[60:80, 100:120]):
        assert detail(out[region]) < 0.5 * detail(source[region])
    [degradation] = ctx.degradations
    assert (degradation.reason, degradation.operation) == (
        "DETECTION_UNAVAILABLE",
        "blur_detections",
    )
    assert "TRITON_TIMEOUT" in degradation.message
    assert "whole image was blurred" in degradation.message


def test_whole_image_blur_keeps_the_alpha_band(make_ctx):
    source = np.dstack([textured(W, H), np.full((H, W), 255, np.uint8)])
    source[:, : W // 2, 3] = 0
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    out = blur_detections.run(from_array(source), BlurDetectionsOptions(4, None, OBSCURE), ctx)
    assert (out.bands, out.format) == (4, "uchar")
    array = to_array(out)
    opaque = np.s_[:, W // 2 + 15 :]
    assert detail(array[opaque][..., :3]) < 0.5 * detail(source[opaque][..., :3])
    assert (array[:, : W // 2 - 15, 3] == 0).all() and (array[opaque][..., 3] == 255).all()


def test_detection_failure_skips_with_a_degradation_when_asked(make_ctx):
    source = textured(W, H)
    image = from_array(source)
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    out = blur_detections.run(image, BlurDetectionsOptions(3, None, SKIP), ctx)
    assert np.array_equal(to_array(out), source)  # the face region stays as it was
    assert [(d.reason, d.operation) for d in ctx.degradations] == [
        ("DETECTION_UNAVAILABLE", "blur_detections")
    ]
    assert "skipped" in ctx.degradations[0].message


@pytest.mark.parametrize("policy", [FAIL, OBSCURE, SKIP])
def test_the_policy_does_not_matter_when_detection_worked(make_ctx, policy):
    source = textured(W, H)
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(30, 20, 40, 30))])
    out = to_array(
        blur_detections.run(from_array(source), BlurDetectionsOptions(4, None, policy), ctx)
    )
    inside = box_mask(30, 20, 70, 50)
    assert (out[~inside] == source[~inside]).all()
    assert changed_region(source, out)[inside].mean() > 0.5
    assert ctx.degradations == []


def test_nothing_detected_leaves_the_image(make_ctx):
    image = from_array(textured(W, H))
    ctx = make_ctx(W, H, objects=[])
    assert blur_detections.run(image, BlurDetectionsOptions(3, None), ctx) is image
    assert ctx.degradations == []


def test_parse(pctx):
    opts = blur_detections.parse(pb.BlurDetections(sigma=5, classes=["Face "]), "b", pctx)
    assert opts == BlurDetectionsOptions(5, frozenset({"face"}), FAIL)
    assert blur_detections.needs_detections(opts)
    blur_detections.parse(pb.BlurDetections(sigma=0, classes=["cat"]), "p.blur_detections", pctx)
    assert [v.field for v in pctx.violations.items] == [
        "p.blur_detections.sigma",
        "p.blur_detections.classes[0]",
    ]


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        (pb.DETECTION_UNAVAILABLE_POLICY_UNSPECIFIED, FAIL),
        (pb.DETECTION_UNAVAILABLE_POLICY_FAIL, FAIL),
        (pb.DETECTION_UNAVAILABLE_POLICY_OBSCURE_WHOLE_IMAGE, OBSCURE),
        (pb.DETECTION_UNAVAILABLE_POLICY_SKIP, SKIP),
    ],
)
def test_parse_the_policy(pctx, value, policy):
    msg = pb.BlurDetections(sigma=5, on_detection_unavailable=value)
    assert blur_detections.parse(msg, "b", pctx).on_unavailable is policy
    assert pctx.violations.items == []


def test_an_unknown_policy_number_is_a_violation(pctx):
    msg = pb.BlurDetections(sigma=5)
    msg.on_detection_unavailable = 99  # open enum: a newer client may send a value we lack
    blur_detections.parse(msg, "p.blur_detections", pctx)
    [violation] = pctx.violations.items
    assert violation.field == "p.blur_detections.on_detection_unavailable"
    assert "99" in violation.description
