"""resize: the pure geometry plan (imgproxy's resizing types, min sizes, enlarge, dpr, extend) and
the pixels and coordinate mapping that ``run`` produces."""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
from hypothesis import given, settings as hsettings, strategies as st
from skimage.transform import resize as sk_resize

from tests.images import (
    coords_image,
    from_array,
    marker_centre,
    origin_of,
    solid,
    ssim,
    textured,
    to_array,
    with_marker,
)
from imagesvc.context import DetectedObject
from imagesvc.planning import PlanEnv, Shape
from imagesvc.geometry import Affine, Box
from imagesvc.ops import resize
from imagesvc.ops.resize import ResizeOptions, plan
from imagesvc.options import CompassGravity, FocusPointGravity, ObjectGravity
from imagesvc.v1 import image_service_pb2 as pb


def size_of(p: resize.ResizePlan) -> tuple[int, int]:
    """The final size a plan produces."""
    return p.extend or p.crop or p.resized


# --- plan: resizing types ---------------------------------------------------------------------


def test_fit_scales_to_the_limiting_side():
    p = plan(400, 200, ResizeOptions(type="fit", width=100, height=100))
    assert p.resized == (100, 50)
    assert p.crop is None and p.extend is None
    assert p.scale_x == p.scale_y == pytest.approx(0.25)


def test_fit_without_enlarge_keeps_a_small_source():
    p = plan(50, 25, ResizeOptions(type="fit", width=100, height=100))
    assert p.resized == (50, 25)
    assert p.scale_x == p.scale_y == 1.0


def test_fit_with_enlarge_grows_a_small_source():
    p = plan(50, 25, ResizeOptions(type="fit", width=100, height=100, enlarge=True))
    assert p.resized == (100, 50)


def test_fill_covers_then_crops_to_the_target():
    p = plan(400, 200, ResizeOptions(type="fill", width=100, height=100))
    assert p.resized == (200, 100)
    assert p.crop == (100, 100)


def test_fill_without_enlarge_crops_a_small_source_to_what_it_has():
    p = plan(50, 150, ResizeOptions(type="fill", width=100, height=100))
    assert p.resized == (50, 150)
    assert p.crop == (50, 100)


def test_fill_with_enlarge_gives_exactly_the_target():
    p = plan(50, 150, ResizeOptions(type="fill", width=100, height=100, enlarge=True))
    assert p.resized == (100, 300)
    assert p.crop == (100, 100)


def test_fill_down_large_source_behaves_like_fill():
    down = plan(400, 200, ResizeOptions(type="fill_down", width=100, height=100))
    fill = plan(400, 200, ResizeOptions(type="fill", width=100, height=100))
    assert down == fill


@pytest.mark.parametrize(
    ("src", "target", "crop"),
    [
        ((80, 40), (100, 100), (40, 40)),  # too small: keep the 1:1 aspect, no enlarging
        ((80, 40), (200, 50), (80, 20)),  # 4:1 target inside an 80x40 source
        ((40, 80), (50, 200), (20, 80)),
    ],
)
def test_fill_down_small_source_crops_to_the_target_aspect(src, target, crop):
    p = plan(*src, ResizeOptions(type="fill_down", width=target[0], height=target[1]))
    assert p.resized == src
    assert p.crop == crop
    assert crop[0] * target[1] == pytest.approx(crop[1] * target[0], abs=target[0])


def test_force_ignores_the_aspect_ratio():
    p = plan(400, 200, ResizeOptions(type="force", width=100, height=100))
    assert p.resized == (100, 100)
    assert (p.scale_x, p.scale_y) == pytest.approx((0.25, 0.5))
    assert p.crop is None


def test_force_with_one_side_keeps_the_aspect_ratio():
    p = plan(400, 200, ResizeOptions(type="force", width=100))
    assert p.resized == (100, 50)


@pytest.mark.parametrize(
    ("src", "target", "expected_type"),
    [
        ((400, 200), (100, 80), "fill"),  # both landscape
        ((200, 400), (60, 100), "fill"),  # both portrait
        ((400, 200), (50, 100), "fit"),  # landscape source, portrait target
        ((200, 400), (100, 50), "fit"),
    ],
)
def test_auto_fills_when_orientations_match_else_fits(src, target, expected_type):
    auto = plan(*src, ResizeOptions(type="auto", width=target[0], height=target[1]))
    same = plan(*src, ResizeOptions(type=expected_type, width=target[0], height=target[1]))
    assert auto == same
    other = "fit" if expected_type == "fill" else "fill"
    assert auto != plan(*src, ResizeOptions(type=other, width=target[0], height=target[1]))


# --- plan: one side, no side ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fit", "fill", "fill_down", "auto"])
def test_width_only_derives_the_height(kind):
    p = plan(400, 200, ResizeOptions(type=kind, width=100))
    assert size_of(p) == (100, 50)


@pytest.mark.parametrize("kind", ["fit", "fill", "fill_down", "force", "auto"])
def test_height_only_derives_the_width(kind):
    p = plan(400, 200, ResizeOptions(type=kind, height=50))
    assert size_of(p) == (100, 50)


def test_no_size_keeps_the_source():
    p = plan(123, 45, ResizeOptions(type="fill"))
    assert size_of(p) == (123, 45)


# --- plan: min sizes, dpr ---------------------------------------------------------------------


def test_min_height_scales_a_fit_result_up():
    p = plan(400, 200, ResizeOptions(type="fit", width=100, height=100, min_height=80))
    assert p.resized == (160, 80)


def test_min_width_wins_over_enlarge_false():
    p = plan(50, 25, ResizeOptions(type="fit", width=100, height=100, min_width=80))
    assert p.resized == (80, 40)


def test_min_width_is_a_no_op_when_already_wide_enough():
    with_min = plan(400, 200, ResizeOptions(type="fit", width=100, height=100, min_width=60))
    assert with_min == plan(400, 200, ResizeOptions(type="fit", width=100, height=100))


def test_min_size_with_force_scales_one_axis_only():
    p = plan(400, 200, ResizeOptions(type="force", width=100, height=20, min_height=50))
    assert p.resized == (100, 50)


def test_dpr_multiplies_target_and_min_sizes():
    assert plan(1000, 500, ResizeOptions(width=100, height=100, dpr=2)).resized == (200, 100)
    fill = plan(1000, 500, ResizeOptions(type="fill", width=100, height=100, dpr=1.5))
    assert fill.crop == (150, 150)
    minimum = plan(1000, 500, ResizeOptions(width=100, height=100, min_height=60, dpr=2))
    assert minimum.resized == (240, 120)


def test_dpr_does_not_enlarge_without_enlarge():
    p = plan(100, 50, ResizeOptions(width=100, height=100, dpr=3))
    assert p.resized == (100, 50)


# --- plan: extend -----------------------------------------------------------------------------


def test_extend_pads_to_the_target():
    p = plan(400, 200, ResizeOptions(type="fit", width=100, height=100, extend=True))
    assert p.resized == (100, 50)
    assert p.extend == (100, 100)


def test_extend_pads_a_small_source_that_may_not_be_enlarged():
    p = plan(50, 25, ResizeOptions(type="fit", width=100, height=80, extend=True))
    assert p.resized == (50, 25)
    assert p.extend == (100, 80)


def test_extend_with_one_side_pads_nothing():
    p = plan(400, 200, ResizeOptions(type="fit", width=100, extend=True))
    assert p.extend is None


def test_extend_is_dpr_scaled():
    p = plan(400, 200, ResizeOptions(type="fit", width=100, height=100, extend=True, dpr=2))
    assert p.extend == (200, 200)


# --- plan: properties ---------------------------------------------------------------------------

sides = st.integers(min_value=1, max_value=6000)
targets = st.integers(min_value=1, max_value=3000)


@hsettings(max_examples=300, deadline=None)
@given(src_w=sides, src_h=sides, width=targets, height=targets, enlarge=st.booleans())
def test_fit_keeps_the_aspect_ratio_and_stays_in_the_box(src_w, src_h, width, height, enlarge):
    p = plan(src_w, src_h, ResizeOptions(type="fit", width=width, height=height, enlarge=enlarge))
    rw, rh = p.resized
    assert p.crop is None and p.extend is None
    assert rw <= width and rh <= height
    if not enlarge:
        assert rw <= src_w and rh <= src_h
    # One side follows from the other and the source's aspect ratio, to within a pixel.
    assert abs(rh - rw * src_h / src_w) <= 1 or abs(rw - rh * src_w / src_h) <= 1
    # ...and it really fits: one side touches the box unless the source was kept as is.
    assert rw == width or rh == height or (not enlarge and (rw, rh) == (src_w, src_h))


@hsettings(max_examples=300, deadline=None)
@given(src_w=sides, src_h=sides, width=targets, height=targets)
def test_fill_with_enlarge_has_exactly_the_target_size(src_w, src_h, width, height):
    p = plan(src_w, src_h, ResizeOptions(type="fill", width=width, height=height, enlarge=True))
    assert size_of(p) == (width, height)
    rw, rh = p.resized
    assert rw >= width and rh >= height


@hsettings(max_examples=200, deadline=None)
@given(src_w=sides, src_h=sides, width=targets, height=targets)
def test_fill_down_never_enlarges_and_never_exceeds_the_target(src_w, src_h, width, height):
    p = plan(src_w, src_h, ResizeOptions(type="fill_down", width=width, height=height))
    out_w, out_h = size_of(p)
    assert out_w <= min(width, src_w) and out_h <= min(height, src_h)


# --- run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        ResizeOptions(type="fit", width=60, height=60),
        ResizeOptions(type="fill", width=60, height=60),
        ResizeOptions(type="fill_down", width=300, height=100),
        ResizeOptions(type="force", width=70, height=20),
        ResizeOptions(type="auto", width=40, height=90),
        ResizeOptions(type="fit", width=90, height=90, extend=True),
        ResizeOptions(type="fill", width=300, height=300, enlarge=True),
    ],
)
def test_run_produces_the_planned_size(make_ctx, opts):
    image = from_array(textured(200, 120))
    out = resize.run(image, opts, make_ctx(200, 120))
    assert (out.width, out.height) == size_of(plan(200, 120, opts))


def test_run_keeps_the_content(make_ctx):
    source = textured(200, 120)
    out = resize.run(from_array(source), ResizeOptions(width=100, height=100), make_ctx(200, 120))
    # An independent resampler (scikit-image, anti-aliased) agrees on the picture.
    expected = sk_resize(source, (60, 100), anti_aliasing=True, preserve_range=True)
    assert ssim(to_array(out), expected.round().astype(np.uint8)) > 0.85


def test_run_maps_a_marker_through_scale_and_crop(make_ctx):
    source = with_marker(solid(200, 100), 120, 40, 4)
    ctx = make_ctx(200, 100)
    out = resize.run(from_array(source), ResizeOptions(type="fill", width=50, height=50), ctx)
    assert (out.width, out.height) == (50, 50)
    expected = ctx.transform.point(122, 42)  # the marker's centre in the source
    found = marker_centre(to_array(out))
    assert found == pytest.approx(expected, abs=1.0)
    assert expected == pytest.approx((36, 21), abs=0.01)


def test_run_maps_a_marker_through_force(make_ctx):
    source = with_marker(solid(200, 100), 150, 20, 10)
    ctx = make_ctx(200, 100)
    out = resize.run(from_array(source), ResizeOptions(type="force", width=100, height=100), ctx)
    assert marker_centre(to_array(out)) == pytest.approx(ctx.transform.point(155, 25), abs=1.0)
    assert ctx.transform.point(155, 25) == pytest.approx((77.5, 25))


def test_run_plans_from_the_logical_size_after_shrink_on_load(make_ctx):
    # The decoder shrank a 400x200 source to 100x50: the result must be what a 400x200 source
    # gives, and the transform must still map source pixels.
    ctx = make_ctx(400, 200)
    ctx.logical_size = (400, 200)
    ctx.transform = Affine.scale(0.25, 0.25)
    image = from_array(with_marker(solid(100, 50), 60, 20, 4))
    out = resize.run(image, ResizeOptions(type="fit", width=80, height=80), ctx)
    assert (out.width, out.height) == (80, 40)
    assert ctx.logical_size is None
    # marker centre at (62, 22) decoded = (248, 88) in the source
    assert ctx.transform.point(248, 88) == pytest.approx(marker_centre(to_array(out)), abs=1.0)


def test_estimate_is_the_size_run_produces(make_ctx, settings):
    # The budget is checked on the estimate, so it must be the size run then makes.
    cases = [
        ((20, 10), ResizeOptions(type="fit", width=300, height=300, enlarge=True, dpr=2)),
        ((1, 2000), ResizeOptions(type="fill", width=128, height=128)),
        ((300, 200), ResizeOptions(type="fill_down", width=400, height=100)),
        ((300, 200), ResizeOptions(type="force", width=50, height=70, extend=True)),
        ((64, 48), ResizeOptions(width=200, height=200, extend=True)),
    ]
    for (width, height), opts in cases:
        planned = resize.estimate(Shape(width, height, 3, 1), opts, PlanEnv(settings)).shape
        out = resize.run(from_array(solid(width, height)), opts, make_ctx(width, height))
        assert (planned.width, planned.height, planned.bands) == (out.width, out.height, out.bands)


def test_a_fill_of_a_long_strip_plans_its_crop_not_the_strip(settings):
    # A 1x100000 source, fill 128x128 without enlarging: the result is 1x128, not 1x100000.
    planned = resize.estimate(
        Shape(1, 100000, 3, 1), ResizeOptions(type="fill", width=128, height=128), PlanEnv(settings)
    )
    assert (planned.shape.width, planned.shape.height) == (1, 128)


def test_run_resizes_alpha_premultiplied(make_ctx):
    # Left half: fully transparent red; right half: opaque blue. Without premultiplying, red
    # would bleed into the visible pixels at the seam.
    array = np.zeros((40, 80, 4), np.uint8)
    array[:, :40] = (255, 0, 0, 0)
    array[:, 40:] = (0, 0, 255, 255)
    out = to_array(
        resize.run(from_array(array), ResizeOptions(width=30, height=30), make_ctx(80, 40))
    )
    visible = out[:, :, 3] > 16
    assert visible.any()
    assert out[:, :, 0][visible].max() <= 8


# --- run: fill crop placement -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gravity", "left"),
    [
        (CompassGravity("west"), 0),
        (CompassGravity("east"), 100),
        (CompassGravity("center"), 50),
        (CompassGravity("west", x_offset=10), 10),
        (CompassGravity("east", x_offset=0.1), 80),  # 10% of the resized width (200)
        (CompassGravity("center", x_offset=20), 70),
        (FocusPointGravity(0.3, 0.5), 10),  # centre at x=60
        (FocusPointGravity(0.95, 0.5), 100),  # clamped at the right edge
        (FocusPointGravity(0.0, 0.5), 0),
    ],
)
def test_fill_crop_follows_gravity(make_ctx, gravity, left):
    # 200x100 to 100x100 fill: no scaling, only the crop's left edge moves.
    ctx = make_ctx(200, 100)
    out = resize.run(
        coords_image(200, 100),
        ResizeOptions(type="fill", width=100, height=100, gravity=gravity),
        ctx,
    )
    assert (out.width, out.height) == (100, 100)
    assert origin_of(out) == (left, 0)
    assert ctx.transform.point(left, 0) == (0, 0)


def test_fill_crop_vertical_gravity(make_ctx):
    for position, top in (("north", 0), ("south", 100), ("center", 50)):
        out = resize.run(
            coords_image(100, 200),
            ResizeOptions(type="fill", width=100, height=100, gravity=CompassGravity(position)),
            make_ctx(100, 200),
        )
        assert origin_of(out) == (0, top), position


def test_fill_crop_object_gravity_centres_on_the_detection(make_ctx):
    face = DetectedObject("face", 0.9, Box(150, 40, 20, 20))  # centre x=160 -> left 110, clamped
    ctx = make_ctx(200, 100, objects=[face])
    out = resize.run(
        coords_image(200, 100),
        ResizeOptions(type="fill", width=60, height=100, gravity=ObjectGravity(None)),
        ctx,
    )
    assert origin_of(out) == (130, 0)


@pytest.mark.parametrize(
    "opts",
    [
        ResizeOptions(type="fill", width=60, height=100, gravity=ObjectGravity(None)),
        ResizeOptions(type="fill", width=50, height=50, dpr=2, gravity=ObjectGravity(None)),
        ResizeOptions(type="fill_down", width=300, height=50, gravity=ObjectGravity(None)),
        ResizeOptions(type="auto", width=30, height=90, min_width=40, gravity=ObjectGravity(None)),
    ],
)
def test_prepare_then_run_is_run(make_ctx, opts):
    # The engine runs ``prepare`` while detections are awaited, then ``run`` once they are
    # known: the same pixels, placement and mapping as ``run`` alone.
    face = DetectedObject("face", 0.9, Box(150, 40, 20, 20))
    alone_ctx = make_ctx(200, 100, objects=[face])
    alone = resize.run(coords_image(200, 100), opts, alone_ctx)
    split_ctx = make_ctx(200, 100)
    prepared = resize.prepare(coords_image(200, 100), opts, split_ctx)
    assert split_ctx.in_memory and prepared.width <= 200
    split_ctx.objects = [face]
    split = resize.run(prepared, opts, split_ctx)
    assert (split.width, split.height) == (alone.width, alone.height)
    assert np.array_equal(to_array(split), to_array(alone))
    assert split_ctx.transform == alone_ctx.transform
    assert split_ctx.prepared is None


def _busy_right(width: int, height: int) -> pyvips.Image:
    """Flat grey with a saturated, edgy patch near the right: attention centres on it."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[height // 3 : 2 * height // 3, width - width // 5 : width - 4] = [255, 0, 0]
    pixels[height // 2 - 2 : height // 2 + 2, width - width // 5 : width - 4] = [0, 255, 0]
    return pyvips.Image.new_from_array(pixels, interpretation="srgb")


def test_prepare_computes_the_smart_fallback_run_then_reads_no_pixels(make_ctx, monkeypatch):
    # No object found: the crop falls back to smart gravity, whose centre ``prepare``
    # computed while detections were awaited; ``run`` places the crop where ``run`` alone
    # would, without another attention pass.
    opts = ResizeOptions(type="fill", width=60, height=100, gravity=ObjectGravity(None))
    alone_ctx = make_ctx(200, 100, objects=[])
    alone = resize.run(_busy_right(200, 100), opts, alone_ctx)
    split_ctx = make_ctx(200, 100)
    split_ctx.spare_worker = True
    prepared = resize.prepare(_busy_right(200, 100), opts, split_ctx)
    assert split_ctx.prepared[1].smart_centre is not None

    def no_second_pass(*args):
        raise AssertionError("the attention centre was computed again")

    monkeypatch.setattr(resize.gravity_mod, "smart_centre", no_second_pass)
    split_ctx.objects = []
    split = resize.run(prepared, opts, split_ctx)
    assert np.array_equal(to_array(split), to_array(alone))
    assert split_ctx.transform == alone_ctx.transform
    # The patch is on the right: the crop moved off centre (left 70) towards it.
    assert split_ctx.transform.point(0, 0)[0] < -70


def test_prepare_leaves_the_attention_out_when_the_fallback_is_centre(make_ctx, settings):
    ctx = make_ctx(200, 100)
    ctx.spare_worker = True
    ctx.settings = settings.model_copy(update={"object_detection_fallback_to_smart_crop": False})
    opts = ResizeOptions(type="fill", width=60, height=100, gravity=ObjectGravity(None))
    prepared = resize.prepare(_busy_right(200, 100), opts, ctx)
    assert ctx.prepared[1].smart_centre is None
    ctx.objects = []
    out = resize.run(prepared, opts, ctx)
    assert (out.width, out.height) == (60, 100)
    assert ctx.transform.point(0, 0) == (-70, 0)  # centred


def test_prepare_computes_nothing_ahead_without_a_spare_worker(make_ctx):
    # A saturated server (ctx.spare_worker false) spends no CPU on what may not be needed:
    # the fallback is then computed by ``run``, with the same answer.
    opts = ResizeOptions(type="fill", width=60, height=100, gravity=ObjectGravity(None))
    ctx = make_ctx(200, 100)
    prepared = resize.prepare(_busy_right(200, 100), opts, ctx)
    assert ctx.prepared[1].smart_centre is None
    ctx.objects = []
    resize.run(prepared, opts, ctx)
    alone_ctx = make_ctx(200, 100, objects=[])
    resize.run(_busy_right(200, 100), opts, alone_ctx)
    assert ctx.transform == alone_ctx.transform


def test_absolute_gravity_offsets_are_dpr_scaled(make_ctx):
    # dpr multiplies "absolute gravity offsets" (proto): a 10 px offset at dpr 2 is 20 px.
    out = resize.run(
        coords_image(200, 100),
        ResizeOptions(
            type="fill", width=50, height=50, dpr=2, gravity=CompassGravity("west", x_offset=10)
        ),
        make_ctx(200, 100),
    )
    assert (out.width, out.height) == (100, 100)
    assert origin_of(out) == (20, 0)


def test_relative_gravity_offsets_are_not_dpr_scaled(make_ctx):
    out = resize.run(
        coords_image(200, 100),
        ResizeOptions(
            type="fill", width=50, height=50, dpr=2, gravity=CompassGravity("west", x_offset=0.25)
        ),
        make_ctx(200, 100),
    )
    assert origin_of(out) == (50, 0)


# --- run: extend --------------------------------------------------------------------------------

EXTEND_PLACEMENT = {
    "north_west": (0, 0),
    "north": (20, 0),
    "north_east": (40, 0),
    "west": (0, 30),
    "center": (20, 30),
    "east": (40, 30),
    "south_west": (0, 60),
    "south": (20, 60),
    "south_east": (40, 60),
}


@pytest.mark.parametrize(("position", "corner"), EXTEND_PLACEMENT.items())
def test_extend_pads_transparently_around_the_image_by_gravity(make_ctx, position, corner):
    ctx = make_ctx(60, 40)
    out = resize.run(
        from_array(solid(60, 40, (10, 200, 30))),
        ResizeOptions(width=100, height=100, extend=True, extend_gravity=CompassGravity(position)),
        ctx,
    )
    assert (out.width, out.height, out.bands) == (100, 100, 4)
    pixels = to_array(out)
    left, top = corner
    inside = np.zeros((100, 100), bool)
    inside[top : top + 40, left : left + 60] = True
    assert (pixels[inside] == (10, 200, 30, 255)).all()
    assert (pixels[~inside][:, 3] == 0).all()
    assert ctx.transform.point(0, 0) == (left, top)


def test_extend_gravity_offsets(make_ctx):
    ctx = make_ctx(60, 40)
    out = resize.run(
        from_array(solid(60, 40)),
        ResizeOptions(
            width=100,
            height=100,
            extend=True,
            extend_gravity=CompassGravity("south_east", x_offset=5, y_offset=0.1),
        ),
        ctx,
    )
    alpha = to_array(out)[:, :, 3]
    ys, xs = np.nonzero(alpha)
    assert (xs.min(), ys.min()) == (35, 50)  # 100-60-5, 100-40-10


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
def test_extend_works_for_every_band_layout(make_ctx, bands):
    array = np.full((40, 60, bands), 90, np.uint8)
    if bands in (2, 4):
        array[:, :, -1] = 255
    out = resize.run(
        from_array(array if bands > 1 else array[:, :, 0]),
        ResizeOptions(width=100, height=100, extend=True),
        make_ctx(60, 40),
    )
    pixels = to_array(out)
    assert (out.width, out.height) == (100, 100)
    assert out.hasalpha()
    assert pixels[0, 0, -1] == 0 and pixels[50, 50, -1] == 255
    assert pixels[50, 50, 0] == 90


# --- parse --------------------------------------------------------------------------------------


def test_parse_defaults(pctx):
    opts = resize.parse(pb.Resize(width=10), "r", pctx)
    assert opts == ResizeOptions(type="fit", width=10, dpr=1.0)
    assert not pctx.violations.items


def test_parse_reports_bad_values(pctx, settings):
    msg = pb.Resize(width=settings.max_result_dimension + 1, dpr=9, type=42)
    resize.parse(msg, "p.resize", pctx)
    fields = {v.field for v in pctx.violations.items}
    assert fields == {"p.resize.width", "p.resize.dpr", "p.resize.type"}


def test_parse_gravity_and_extend(pctx):
    msg = pb.Resize(
        type=pb.RESIZING_TYPE_FILL,
        width=10,
        height=10,
        extend=pb.Extend(
            enabled=True, gravity=pb.CompassGravity(position=pb.COMPASS_SOUTH, y_offset=3)
        ),
        gravity=pb.Gravity(focus_point=pb.FocusPoint(x=0.2, y=0.7)),
    )
    opts = resize.parse(msg, "r", pctx)
    assert opts.type == "fill" and opts.extend
    assert opts.extend_gravity == CompassGravity("south", 0.0, 3.0)
    assert opts.gravity == FocusPointGravity(pytest.approx(0.2), pytest.approx(0.7))


def test_needs_detections_only_for_object_gravity_on_cropping_types():
    obj = ObjectGravity(frozenset({"face"}))
    assert resize.needs_detections(ResizeOptions(type="fill", gravity=obj))
    assert resize.needs_detections(ResizeOptions(type="fill_down", gravity=obj))
    assert not resize.needs_detections(ResizeOptions(type="fit", gravity=obj))
    assert not resize.needs_detections(ResizeOptions(type="fill"))


def test_extend_gravity_offsets_are_dpr_scaled(make_ctx):
    out = resize.run(
        from_array(solid(60, 40)),
        ResizeOptions(
            width=100,
            height=100,
            extend=True,
            dpr=2,
            extend_gravity=CompassGravity("north_west", x_offset=5, y_offset=0.1),
        ),
        make_ctx(60, 40),
    )
    assert (out.width, out.height) == (200, 200)
    ys, xs = np.nonzero(to_array(out)[:, :, 3])
    assert (xs.min(), ys.min()) == (10, 20)  # 5 px * dpr 2; 10% of the 200 px canvas


# --- placement_scale: the scale object gravity places its crop at -------------------------------


def test_placement_scale_is_the_fill_scale_for_object_gravity():
    fill = ResizeOptions(type="fill", width=256, height=256, gravity=ObjectGravity(None))
    # 4000x3000 filled into 256x256: scaled to 341x256, the larger of the two side ratios.
    assert resize.placement_scale(fill, Shape(4000, 3000, 3, 1)) == pytest.approx(256 / 3000)
    portrait = ResizeOptions(type="fill", width=90, height=160, gravity=ObjectGravity(None))
    assert resize.placement_scale(portrait, Shape(4000, 3000, 3, 1)) == pytest.approx(
        160 / 3000, rel=0.01
    )


def test_placement_scale_is_none_without_object_gravity():
    shape = Shape(4000, 3000, 3, 1)
    assert resize.placement_scale(ResizeOptions(type="fill", width=256, height=256), shape) is None
    fit = ResizeOptions(type="fit", width=256, height=256, gravity=ObjectGravity(None))
    assert resize.placement_scale(fit, shape) is None
