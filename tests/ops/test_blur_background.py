"""blur_background: parse validation, the background filtered and the person untouched for
every image form a step may see, the policies when segmentation is unavailable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imagesvc.errors import SegmentationUnavailable
from imagesvc.geometry import Affine
from imagesvc.ops import blur_background
from imagesvc.ops.blur_background import BlurBackgroundOptions
from imagesvc.ops.segmentation_regions import OnSegmentationUnavailable
from imagesvc.planning import PlanEnv, Shape
from imagesvc.regions.masks import RegionMap
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import from_array, textured, to_array

W, H = 160, 120


def person_square() -> np.ndarray:
    """Person mask of a W x H source: x 50..110, y 30..90."""
    person = np.zeros((H, W), np.float32)
    person[30:90, 50:110] = 1.0
    return person


def with_regions(ctx) -> None:
    # Analysis at half the source's size, as the detector's input of a large source is.
    half = np.ascontiguousarray(person_square()[::2, ::2])
    ctx.regions = RegionMap(half, np.zeros_like(half), (W, H), "selfie_segmentation", "prior")


def detail(array: np.ndarray) -> float:
    return float(np.abs(np.diff(array.astype(int), axis=1)).mean())


def parse(pctx, **fields):
    return blur_background.parse(pb.BlurBackground(**fields), "op", pctx)


def test_parse_defaults(pctx):
    opts = parse(pctx)
    assert opts == BlurBackgroundOptions(0.0, "gaussian", OnSegmentationUnavailable.SKIP)
    assert not pctx.violations.items
    assert blur_background.needs_detections(opts) and blur_background.needs_regions(opts)
    assert blur_background.detection_classes(opts) == frozenset({"face"})


@pytest.mark.parametrize(
    "fields, path",
    [
        ({"sigma": -1.0}, "op.sigma"),
        ({"sigma": math.nan}, "op.sigma"),
        ({"sigma": math.inf}, "op.sigma"),
        ({"sigma": 1000.0}, "op.sigma"),
        ({"filter": 42}, "op.filter"),
        ({"on_segmentation_unavailable": 9}, "op.on_segmentation_unavailable"),
    ],
)
def test_parse_violations(pctx, fields, path):
    parse(pctx, **fields)
    assert [v.field for v in pctx.violations.items] == [path]


def test_parse_filters_and_policies(pctx):
    assert parse(pctx, filter=pb.BACKGROUND_FILTER_MEDIAN).method == "median"
    assert parse(pctx, filter=pb.BACKGROUND_FILTER_CHROMA).method == "chroma"
    assert parse(pctx, filter=pb.BACKGROUND_FILTER_DEFOCUS).method == "defocus"
    failing = parse(pctx, on_segmentation_unavailable=pb.SEGMENTATION_UNAVAILABLE_POLICY_FAIL)
    assert failing.on_unavailable is OnSegmentationUnavailable.FAIL
    assert not pctx.violations.items


def test_the_background_is_blurred_and_the_person_kept(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H)
    with_regions(ctx)
    out = to_array(blur_background.run(from_array(source), BlurBackgroundOptions(3.0), ctx))
    person = person_square() > 0.5
    assert np.array_equal(out[person], source[person])
    assert detail(out[:, :30]) < 0.5 * detail(source[:, :30])
    assert ctx.degradations == []


def test_regions_follow_the_transform(make_ctx):
    # The current image is the source's right half, flipped: the person (x 50..110) is at
    # x 50..80 (source 80..110 -> 0..30 -> 80..50).
    source = textured(W // 2, H)
    ctx = make_ctx(W, H)
    with_regions(ctx)
    ctx.transform = Affine.translate(-80, 0).then(Affine(a=-1, c=80))
    out = to_array(blur_background.run(from_array(source), BlurBackgroundOptions(2.0), ctx))
    assert np.array_equal(out[31:89, 51:79], source[31:89, 51:79])
    assert detail(out[:, :30]) < 0.6 * detail(source[:, :30])


@pytest.mark.parametrize("form", ["rgba", "grey", "grey16", "rgb16", "rgba16"])
@pytest.mark.parametrize("method", ["gaussian", "median", "chroma", "defocus"])
def test_every_image_form(make_ctx, form, method):
    base = from_array(textured(W, H))
    image = {
        "rgba": lambda: base.bandjoin(200),
        "grey": lambda: base.colourspace("b-w"),
        "grey16": lambda: base.colourspace("grey16"),
        "rgb16": lambda: base.colourspace("rgb16"),
        "rgba16": lambda: base.colourspace("rgb16").bandjoin(60000).cast("ushort"),
    }[form]()
    ctx = make_ctx(W, H)
    with_regions(ctx)
    out = blur_background.run(image, BlurBackgroundOptions(3.0, method), ctx)
    assert (out.bands, out.format, out.interpretation) == (
        image.bands,
        image.format,
        image.interpretation,
    )
    before, after = to_array(image), to_array(out)
    person = person_square() > 0.5
    assert np.array_equal(after[person], before[person])
    if image.hasalpha():
        assert np.array_equal(after[..., -1], before[..., -1])
    if method != "chroma" or image.bands >= 3:
        assert not np.array_equal(after[:, :30], before[:, :30])


def test_skip_degrades_and_leaves_the_image(make_ctx):
    source = textured(W, H)
    ctx = make_ctx(W, H)
    ctx.regions_failure = "TRITON_UNAVAILABLE"
    out = blur_background.run(from_array(source), BlurBackgroundOptions(3.0), ctx)
    assert np.array_equal(to_array(out), source)
    [item] = ctx.degradations
    assert (item.reason, item.operation) == ("SEGMENTATION_UNAVAILABLE", "blur_background")
    assert "TRITON_UNAVAILABLE" in item.message


def test_fail_raises(make_ctx):
    ctx = make_ctx(W, H)
    ctx.regions_failure = "TRITON_TIMEOUT"
    opts = BlurBackgroundOptions(3.0, on_unavailable=OnSegmentationUnavailable.FAIL)
    with pytest.raises(SegmentationUnavailable) as failed:
        blur_background.run(from_array(textured(W, H)), opts, ctx)
    assert failed.value.reason == "SEGMENTATION_UNAVAILABLE"
    assert failed.value.code.name == "UNAVAILABLE"
    assert failed.value.retry_after_s == ctx.settings.triton_retry_after_s
    assert failed.value.metadata["segmentation_failure"] == "TRITON_TIMEOUT"


def test_automatic_sigma_is_one_percent_of_the_long_side():
    assert blur_background.sigma_for(BlurBackgroundOptions(0.0), 2000, 1000) == 20.0
    assert blur_background.sigma_for(BlurBackgroundOptions(5.0), 2000, 1000) == 5.0


def test_a_defocus_blurs_like_a_lens_with_a_narrow_feather():
    defocus = BlurBackgroundOptions(0.0, "defocus")
    assert blur_background.sigma_for(defocus, 2000, 1000) == 80.0
    # Its feather is the automatic Gaussian's (2 x 20 px), not its own reach (2 x 80 px).
    assert blur_background.margin_for(defocus, 80.0, 2000, 1000) == 40.0
    gaussian = BlurBackgroundOptions(0.0)
    assert blur_background.margin_for(gaussian, 20.0, 2000, 1000) == 40.0


@pytest.mark.parametrize("method", ["gaussian", "median", "chroma", "defocus"])
def test_estimate(method, settings):
    shape = Shape(2000, 1500, 3, 1)
    estimate = blur_background.estimate(
        shape, BlurBackgroundOptions(0.0, method), PlanEnv(settings)
    )
    assert estimate.shape == shape and estimate.random_access and estimate.work_s > 0
