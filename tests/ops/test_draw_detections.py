"""draw_detections: the outline colour on the box edges only, a label tab next to the box, and a
degradation instead of drawing when detection failed."""

from __future__ import annotations

import numpy as np
import pyvips
import pytest

from tests.images import from_array, solid, to_array
from imagesvc.context import DetectedObject
from imagesvc.geometry import Affine, Box
from imagesvc.ops import draw_detections
from imagesvc.ops.draw_detections import PALETTE, DrawDetectionsOptions
from imagesvc.v1 import image_service_pb2 as pb

W, H = 200, 150
GREY = (128, 128, 128)
FACE_INK = PALETTE[0]  # classes are coloured in sorted order: face, person
PERSON_INK = PALETTE[1]


def draw(make_ctx, objects, classes=None, array=None, transform=None):
    source = solid(W, H, GREY) if array is None else array
    ctx = make_ctx(W, H, objects=objects)
    if transform is not None:
        ctx.transform = transform
    out = draw_detections.run(from_array(source), DrawDetectionsOptions(classes), ctx)
    return source, to_array(out), ctx


def ring(left, top, width, height, thickness) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + height, left : left + width] = True
    inner_rows = slice(top + thickness, top + height - thickness)
    inner_cols = slice(left + thickness, left + width - thickness)
    mask[inner_rows, inner_cols] = False
    return mask


def changed(source, out) -> np.ndarray:
    return np.any(source != out, axis=2)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_outline_on_the_edges_and_a_tab_above(make_ctx):
    source, out, _ = draw(make_ctx, [DetectedObject("face", 0.87, Box(40, 60, 80, 50))])
    thickness = 2  # max(2, round(min(200, 150) / 200))
    edge = ring(40, 60, 80, 50, thickness)
    assert (out[edge] == FACE_INK).all()
    # The inside of the box is untouched.
    assert (out[60 + thickness : 110 - thickness, 40 + thickness : 120 - thickness] == GREY).all()
    # Everything else that changed is the label tab, sitting on the box's top edge at its left.
    in_box = np.zeros((H, W), bool)
    in_box[60:110, 40:120] = True
    tab = changed(source, out) & ~in_box
    left, top, right, bottom = bbox(tab)
    assert (left, bottom) == (40, 60)
    assert 8 <= bottom - top <= 40 and 20 <= right - left <= W - 40
    assert tab[top:bottom, left:right].all()  # a filled tab
    tab_pixels = out[top:bottom, left:right].reshape(-1, 3)
    is_ink = np.all(tab_pixels == FACE_INK, axis=1)
    assert is_ink.mean() > 0.4  # mostly ink...
    assert (tab_pixels.astype(int).sum(axis=1) < 200).sum() > 10  # ...with dark text on it


def test_box_at_the_top_gets_its_tab_inside(make_ctx):
    source, out, _ = draw(make_ctx, [DetectedObject("face", 0.5, Box(100, 0, 90, 80))])
    in_box = np.zeros((H, W), bool)
    in_box[0:80, 100:190] = True
    assert not changed(source, out)[~in_box].any()
    assert (out[0:2, 100:190] == FACE_INK).all()
    assert changed(source, out)[2:10, 102:140].all()  # the tab, inside the box's top-left
    assert (out[40, 110:180] == GREY).all()  # below the tab, inside the outline


def test_each_class_has_its_own_colour(make_ctx):
    objects = [
        DetectedObject("person", 0.9, Box(110, 70, 80, 70)),
        DetectedObject("face", 0.9, Box(10, 40, 60, 60)),
    ]
    _, out, _ = draw(make_ctx, objects)
    assert (out[ring(10, 40, 60, 60, 2)] == FACE_INK).all()
    assert (out[ring(110, 70, 80, 70, 2)] == PERSON_INK).all()


def test_class_filter(make_ctx):
    objects = [
        DetectedObject("person", 0.9, Box(110, 70, 80, 70)),
        DetectedObject("face", 0.9, Box(10, 40, 60, 60)),
    ]
    source, out, _ = draw(make_ctx, objects, classes=frozenset({"person"}))
    assert not changed(source, out)[:, :100].any()
    assert (out[ring(110, 70, 80, 70, 2)] == FACE_INK).all()  # the only class drawn: first colour


def test_boxes_follow_the_transform(make_ctx):
    # Source is 400x300, the image is the source halved and flipped horizontally.
    transform = Affine.scale(0.5, 0.5).then(Affine.flip(True, False, W, H))
    _, out, _ = draw(
        make_ctx, [DetectedObject("face", 0.9, Box(40, 120, 100, 100))], transform=transform
    )
    # (40..140, 120..220) -> (20..70, 60..110) -> flipped: (130..180, 60..110)
    assert (out[ring(130, 60, 50, 50, 2)] == FACE_INK).all()


def test_thickness_grows_with_the_image(make_ctx, settings):
    from imagesvc.context import StepContext

    big = solid(1000, 800, GREY)
    ctx = StepContext(settings, 1e12, (1000, 800))
    ctx.objects = [DetectedObject("face", 0.9, Box(100, 200, 300, 300))]
    out = to_array(draw_detections.run(from_array(big), DrawDetectionsOptions(None), ctx))
    thickness = round(800 / 200)
    assert (out[300, 100 : 100 + thickness] == FACE_INK).all()
    assert (out[300, 100 + thickness] == GREY).all()


def test_grey_and_alpha_images(make_ctx):
    grey = np.full((H, W), 100, np.uint8)
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(40, 60, 80, 50))])
    out = to_array(draw_detections.run(from_array(grey), DrawDetectionsOptions(None), ctx))
    assert out.shape[2] == 1 and (out[60:62, 40:120, 0] == max(FACE_INK)).all()
    rgba = np.dstack([solid(W, H, GREY), np.full((H, W), 0, np.uint8)])
    ctx = make_ctx(W, H, objects=[DetectedObject("face", 0.9, Box(40, 60, 80, 50))])
    out = to_array(draw_detections.run(from_array(rgba), DrawDetectionsOptions(None), ctx))
    assert (out[60:62, 40:120] == (*FACE_INK, 255)).all()  # the outline is opaque
    assert (out[80, 60] == (*GREY, 0)).all()


def test_detection_failure_skips_drawing_with_a_degradation(make_ctx):
    image = from_array(solid(W, H, GREY))
    ctx = make_ctx(W, H, objects=[], detection_failure="TRITON_UNAVAILABLE")
    assert draw_detections.run(image, DrawDetectionsOptions(None), ctx) is image
    assert [(d.reason, d.operation) for d in ctx.degradations] == [
        ("DETECTION_UNAVAILABLE", "draw_detections")
    ]
    # Reported once even when the step runs again.
    draw_detections.run(image, DrawDetectionsOptions(None), ctx)
    assert len(ctx.degradations) == 1


@pytest.mark.parametrize("classes", [[], ["all"], ["face", "ALL"]])
def test_parse_all_classes(pctx, classes):
    opts = draw_detections.parse(pb.DrawDetections(classes=classes), "d", pctx)
    assert opts == DrawDetectionsOptions(None)
    assert draw_detections.needs_detections(opts)
    assert not pctx.violations.items


def test_parse_unknown_class(pctx):
    draw_detections.parse(pb.DrawDetections(classes=["face", "unicorn"]), "p.dd", pctx)
    [violation] = pctx.violations.items
    assert violation.field == "p.dd.classes[1]"
    assert "unicorn" in violation.description


@pytest.mark.parametrize("size", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 300), (300, 2)])
def test_images_a_pixel_or_two_across_are_drawn_on(make_ctx, size):
    # The box covers the whole image: there is no room for a tab or its text, only ink.
    width, height = size
    ctx = make_ctx(width, height, objects=[DetectedObject("face", 0.9, Box(0, 0, width, height))])
    out = draw_detections.run(
        from_array(solid(width, height, GREY)), DrawDetectionsOptions(None), ctx
    )
    array = to_array(out)
    assert array.shape == (height, width, 3)
    # Every pixel is within 2 px of an edge, so all of it is outline or tab (ink or text).
    assert np.any(array != GREY, axis=2).all()


def test_drawing_costs_follow_the_boxes_not_the_image(make_ctx):
    # pyvips copies an image before each draw; drawing on patches keeps a big image's pixels
    # out of memory until the encode reads them.
    ctx = make_ctx(4000, 3000, objects=[DetectedObject("face", 0.9, Box(10, 40, 30, 30))])
    big = pyvips.Image.black(4000, 3000, bands=3).copy(interpretation="srgb") + 128
    ctx.in_memory = True  # as if the image had been copied to memory already
    out = draw_detections.run(big.cast("uchar"), DrawDetectionsOptions(None), ctx)
    patch = to_array(out.extract_area(0, 0, 60, 80))
    assert (patch[40, 10:40] == FACE_INK).all()
    assert (to_array(out.extract_area(3000, 2000, 10, 10)) == 128).all()
