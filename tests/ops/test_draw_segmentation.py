"""draw_segmentation: parse validation, skin and clothes tinted, the background untouched,
every image form, and the degradation when segmentation is unavailable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imagesvc.ops import draw_segmentation
from imagesvc.ops.draw_segmentation import CLOTHES_TINT, SKIN_TINT, DrawSegmentationOptions
from imagesvc.planning import PlanEnv, Shape
from imagesvc.regions.masks import RegionMap
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import from_array, textured, to_array

W, H = 120, 80


def with_regions(ctx) -> None:
    """Person x 20..100, y 10..70; its left half skin."""
    person = np.zeros((H, W), np.float32)
    person[10:70, 20:100] = 1.0
    skin = np.zeros_like(person)
    skin[10:70, 20:60] = 1.0
    ctx.regions = RegionMap(person, skin, (W, H), "selfie_segmentation", "faces")


def parse(pctx, **fields):
    return draw_segmentation.parse(pb.DrawSegmentation(**fields), "op", pctx)


def test_parse(pctx):
    assert parse(pctx) == DrawSegmentationOptions(0.5)
    assert parse(pctx, opacity=1.0) == DrawSegmentationOptions(1.0)
    assert parse(pctx, opacity=0.25) == DrawSegmentationOptions(0.25)
    assert not pctx.violations.items
    opts = parse(pctx)
    assert draw_segmentation.needs_detections(opts) and draw_segmentation.needs_regions(opts)


@pytest.mark.parametrize("opacity", [-0.1, 1.5, math.nan, math.inf])
def test_opacity_out_of_range(pctx, opacity):
    parse(pctx, opacity=opacity)
    assert [v.field for v in pctx.violations.items] == ["op.opacity"]


def test_tints(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H)
    with_regions(ctx)
    out = to_array(draw_segmentation.run(from_array(source), DrawSegmentationOptions(1.0), ctx))
    assert (out[20:60, 25:55] == SKIN_TINT).all()
    assert (out[20:60, 65:95] == CLOTHES_TINT).all()
    assert np.array_equal(out[:8], source[:8]) and np.array_equal(out[:, :18], source[:, :18])
    half = to_array(draw_segmentation.run(from_array(source), DrawSegmentationOptions(0.5), ctx))
    expected = np.round(source[40, 30] * 0.5 + np.array(SKIN_TINT) * 0.5)
    assert np.abs(half[40, 30].astype(int) - expected).max() <= 1
    assert ctx.degradations == []


@pytest.mark.parametrize("form", ["rgba", "grey", "grey16", "rgb16", "greya"])
def test_every_image_form(make_ctx, form):
    base = from_array(textured(W, H))
    image = {
        "rgba": lambda: base.bandjoin(200),
        "grey": lambda: base.colourspace("b-w"),
        "grey16": lambda: base.colourspace("grey16"),
        "rgb16": lambda: base.colourspace("rgb16"),
        "greya": lambda: base.colourspace("b-w").bandjoin(128),
    }[form]()
    ctx = make_ctx(W, H)
    with_regions(ctx)
    out = draw_segmentation.run(image, DrawSegmentationOptions(1.0), ctx)
    deep = image.format == "ushort"
    assert out.format == image.format
    assert out.bands == (4 if image.hasalpha() else 3)
    assert out.interpretation == ("rgb16" if deep else "srgb")
    pixels = to_array(out)
    scale = 257 if deep else 1
    assert (pixels[40, 30, :3] == np.array(SKIN_TINT) * scale).all()
    assert (pixels[40, 80, :3] == np.array(CLOTHES_TINT) * scale).all()
    if image.hasalpha():
        assert np.array_equal(pixels[..., 3], to_array(image)[..., -1])


def test_unavailable_degrades(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H)
    ctx.regions_failure = "TRITON_UNAVAILABLE"
    out = draw_segmentation.run(from_array(source), DrawSegmentationOptions(1.0), ctx)
    assert np.array_equal(to_array(out), source)
    [item] = ctx.degradations
    assert (item.reason, item.operation) == ("SEGMENTATION_UNAVAILABLE", "draw_segmentation")


def test_estimate(settings):
    grey = draw_segmentation.estimate(
        Shape(100, 50, 1, 1), DrawSegmentationOptions(), PlanEnv(settings)
    )
    assert grey.shape == Shape(100, 50, 3, 1) and grey.work_s > 0
    rgba = draw_segmentation.estimate(
        Shape(100, 50, 4, 2), DrawSegmentationOptions(), PlanEnv(settings)
    )
    assert rgba.shape == Shape(100, 50, 4, 2)
