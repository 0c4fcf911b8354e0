"""Request planning: planned shapes are the shapes the engine produces, chains of window
operations are split by a copy to memory, and the budget refuses what it should with figures."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.images import from_array, jpeg, png
from imagesvc import planning, vips
from imagesvc.planning.plan import TILE_PREPARE_NS
from imagesvc.context import StepContext
from imagesvc.engine import Engine, open_header, output_format, plan_shrink_on_load, source_info
from imagesvc.errors import RequestTooCostly, ResultTooLarge, ResultUnencodable
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb

SKIP = pb.DETECTION_UNAVAILABLE_POLICY_SKIP


@pytest.fixture(scope="module")
def settings() -> Settings:
    settings = Settings(workers=1)
    vips.configure(settings)
    return settings


def make_plan(settings: Settings, data: bytes, *pipelines, fmt=pb.IMAGE_FORMAT_UNSPECIFIED):
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[pb.Pipeline(operations=ops) for ops in pipelines],
        output=pb.OutputOptions(format=fmt),
    )
    request = parse_process_request(msg, settings, frozenset({"face"}))
    header = open_header(request.data, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    return planning.plan_request(
        source_info(header, shrink, len(data), settings),
        request.pipelines,
        output_format(request.output, header.format),
        settings,
    ), request


def blur(sigma: float) -> pb.Operation:
    return pb.Operation(blur=pb.Blur(sigma=sigma))


def resize(**kwargs) -> pb.Operation:
    return pb.Operation(resize=pb.Resize(**kwargs))


SOURCE = jpeg(np.full((300, 400, 3), 90, np.uint8))


# --- Where the plan copies to memory ------------------------------------------------------------


@pytest.mark.parametrize(
    "ops, copies",
    [
        ([blur(20)], [False]),
        ([blur(20), blur(20)], [False, True]),
        ([blur(20), resize(width=200), blur(5)], [False, False, True]),
        ([resize(width=200), blur(20)], [False, False]),
        ([blur(20), pb.Operation(pixelate=pb.Pixelate(size=16)), blur(3)], [False, True, True]),
        ([blur(0.5), blur(0.5)], [False, False]),  # one-tap kernels read no context
    ],
)
def test_a_second_window_operation_in_a_lazy_chain_gets_a_copy_before_it(settings, ops, copies):
    plan, _ = make_plan(settings, SOURCE, ops)
    assert [step.copy_before for step in plan.steps] == copies


def test_the_engine_runs_each_planned_copy_and_the_result_matches_the_lazy_chain(
    settings, monkeypatch
):
    # Four sigma-60 blurs: the engine copies to memory before blurs 2-4, as planned, and the
    # pixels are those of the plain lazy chain. (What the copies save in CPU is measured, not
    # asserted: bench/cost_model.py, README "Copies to memory".)
    data = jpeg(np.random.default_rng(3).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[pb.Pipeline(operations=[blur(60)] * 4)],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
    )
    copied: list[tuple[int, int]] = []
    original = StepContext.materialise

    def counting(self, image):
        copied.append((image.width, image.height))
        return original(self, image)

    monkeypatch.setattr(StepContext, "materialise", counting)
    engine = Engine(settings, None, NullMetrics())
    try:
        request = parse_process_request(msg, settings, frozenset())
        result = asyncio.run(engine.process(request, time.monotonic() + 60))
    finally:
        engine.close()
    assert copied == [(200, 150)] * 3
    import pyvips

    lazy = pyvips.Image.new_from_buffer(data, "")
    for _ in range(4):
        lazy = lazy.gaussblur(60)
    ours = pyvips.Image.new_from_buffer(result.data, "")
    difference = (ours.cast("int") - lazy.cast("int")).abs().max()
    assert difference <= 1


# --- Budget -------------------------------------------------------------------------------------


def expect_refused(settings, data, *pipelines, fmt=pb.IMAGE_FORMAT_UNSPECIFIED):
    plan, _ = make_plan(settings, data, *pipelines, fmt=fmt)
    with pytest.raises((RequestTooCostly, ResultTooLarge, ResultUnencodable)) as caught:
        planning.check_budget(plan, settings)
    return plan, caught.value


def test_an_intermediate_over_the_megapixel_limit_is_refused_even_if_the_result_is_small(settings):
    enlarge = resize(type=pb.RESIZING_TYPE_FORCE, width=16384, height=16384, enlarge=True)
    shrink = resize(width=100)
    plan, error = expect_refused(settings, SOURCE, [enlarge, shrink])
    assert isinstance(error, RequestTooCostly) and error.reason == "REQUEST_TOO_COSTLY"
    assert error.metadata["limit"] == "max_result_mp"
    assert error.metadata["largest_at"] == "pipelines[0].operations[0].resize"
    assert error.metadata["largest_megapixels"] == "268.4"
    assert (plan.output.width, plan.output.height) == (100, 100)


def test_work_over_budget_is_refused_with_the_figures(settings):
    ten_pipelines = [[blur(100)] * 32] * 10
    source = jpeg(np.full((1200, 1920, 3), 90, np.uint8))
    plan, error = expect_refused(settings, source, *ten_pipelines)
    assert error.metadata["limit"] == "max_request_work_s"
    assert float(error.metadata["work_s"]) == pytest.approx(plan.work_s, abs=0.01)
    assert plan.work_s > settings.max_request_work_s
    assert error.metadata["limit_work_s"] == "10"


def test_memory_over_budget_is_refused(settings):
    small = Settings(max_request_memory_mb=64)
    enlarge = resize(type=pb.RESIZING_TYPE_FORCE, width=6000, height=4000, enlarge=True)
    plan, error = expect_refused(small, SOURCE, [enlarge, pb.Operation(rotate=pb.Rotate(angle=90))])
    assert error.metadata["limit"] == "max_request_memory_mb"
    assert plan.peak_bytes > 64 * 2**20
    # The same request fits the default budget.
    planning.check_budget(plan, settings)


def test_a_format_that_cannot_hold_the_result_is_refused_before_any_work(settings):
    wide = resize(type=pb.RESIZING_TYPE_FORCE, width=16384, height=10, enlarge=True)
    _, error = expect_refused(settings, SOURCE, [wide], fmt=pb.IMAGE_FORMAT_WEBP)
    assert isinstance(error, ResultUnencodable)
    assert error.metadata == {"width": "16384", "height": "10", "format": "webp", "limit": "16383"}
    plan, _ = make_plan(settings, SOURCE, [wide], fmt=pb.IMAGE_FORMAT_PNG)
    planning.check_budget(plan, settings)  # PNG holds it


def test_a_result_over_the_dimension_limit_is_result_too_large(settings):
    narrow = Settings(max_result_dimension=1000)
    wide = resize(type=pb.RESIZING_TYPE_FORCE, width=1000, height=10, enlarge=True, dpr=2)
    _, error = expect_refused(narrow, SOURCE, [wide], fmt=pb.IMAGE_FORMAT_PNG)
    assert isinstance(error, ResultTooLarge)
    assert error.metadata["width"] == "2000"


def test_a_long_strip_filled_to_a_square_is_not_refused(settings):
    # The false positive: 1x100000 filled to 128x128 is 1x128, not 1x100000.
    strip = png(np.full((100000, 1, 3), 50, np.uint8))
    plan, _ = make_plan(
        settings, strip, [resize(type=pb.RESIZING_TYPE_FILL, width=128, height=128)]
    )
    planning.check_budget(plan, settings)
    assert (plan.output.width, plan.output.height) == (1, 128)


# --- Planned shapes are the engine's --------------------------------------------------------


GRAVITIES = st.sampled_from(
    [
        pb.Gravity(),
        pb.Gravity(smart=pb.SmartGravity()),
        pb.Gravity(compass=pb.CompassGravity(position=pb.COMPASS_SOUTH_EAST, x_offset=3)),
        pb.Gravity(focus_point=pb.FocusPoint(x=0.2, y=0.9)),
    ]
)
SIDES = st.integers(0, 160)
OPERATIONS = st.one_of(
    st.builds(
        lambda kind, w, h, mw, enlarge, extend, gravity, dpr: resize(
            type=kind,
            width=w,
            height=h,
            min_width=mw,
            enlarge=enlarge,
            extend=pb.Extend(enabled=extend),
            gravity=gravity,
            dpr=dpr,
        ),
        st.sampled_from([1, 2, 3, 4, 5]),
        SIDES,
        SIDES,
        st.integers(0, 60),
        st.booleans(),
        st.booleans(),
        GRAVITIES,
        st.sampled_from([0, 1, 1.5, 2]),
    ),
    st.builds(
        lambda w, h, gravity: pb.Operation(crop=pb.Crop(width=w, height=h, gravity=gravity)),
        st.one_of(st.integers(0, 150), st.floats(0.05, 0.95)),
        st.one_of(st.integers(0, 150), st.floats(0.05, 0.95)),
        GRAVITIES,
    ),
    st.builds(
        lambda a: pb.Operation(rotate=pb.Rotate(angle=a)), st.sampled_from([0, 90, 180, 270])
    ),
    st.builds(
        lambda h, v: pb.Operation(flip=pb.Flip(horizontal=h, vertical=v)),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda s: blur(s), st.floats(0.3, 8)),
    st.builds(lambda s: pb.Operation(sharpen=pb.Sharpen(sigma=s)), st.floats(0.3, 3)),
    st.builds(lambda s: pb.Operation(pixelate=pb.Pixelate(size=s)), st.integers(2, 40)),
    st.just(pb.Operation(background=pb.Background(color=pb.Color(red=10, green=20, blue=30)))),
    st.just(pb.Operation(auto_rotate=pb.AutoRotate())),
    st.just(pb.Operation(draw_detections=pb.DrawDetections())),
    st.just(
        pb.Operation(blur_detections=pb.BlurDetections(sigma=2, on_detection_unavailable=SKIP))
    ),
)


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(1, 120),
    height=st.integers(1, 120),
    bands=st.sampled_from([1, 2, 3, 4]),
    source_format=st.sampled_from(["png", "jpeg"]),
    pipelines=st.lists(st.lists(OPERATIONS, min_size=1, max_size=4), min_size=1, max_size=3),
    output=st.sampled_from([pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_WEBP]),
)
def test_the_planned_result_is_the_result(
    settings, width, height, bands, source_format, pipelines, output
):
    rng = np.random.default_rng(width * 1000 + height)
    array = rng.integers(0, 255, (height, width, bands), dtype=np.uint8)
    if source_format == "jpeg":
        array = array[:, :, : 1 if bands <= 2 else 3]
    data = (jpeg if source_format == "jpeg" else png)(
        from_array(array.squeeze(2) if array.shape[2] == 1 else array)
    )
    plan, request = make_plan(settings, data, *pipelines, fmt=output)
    try:
        planning.check_budget(plan, settings)
    except (RequestTooCostly, ResultTooLarge, ResultUnencodable):
        return  # the enlargements can be over the limits; nothing to compare then
    engine = Engine(settings, None, NullMetrics())
    try:
        result = asyncio.run(engine.process(request, time.monotonic() + 60))
    finally:
        engine.close()
    assert (result.width, result.height) == (plan.output.width, plan.output.height)


# --- Detection ----------------------------------------------------------------------------------


def detection_plans(settings: Settings, data: bytes, ops, detection):
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=data), pipelines=[pb.Pipeline(operations=ops)]
    )
    request = parse_process_request(msg, settings, frozenset({"face"}))
    header = open_header(request.data, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    plans = []
    for plan_detection in (None, detection):
        factor = plan_detection[0] if plan_detection and plan_detection[1] else shrink
        plans.append(
            planning.plan_request(
                source_info(header, factor, len(data), settings, plan_detection),
                request.pipelines,
                "jpeg",
                settings,
            )
        )
    return plans


def test_detection_is_planned_as_a_shrink_on_load_decode_not_a_copy_of_the_image(settings):
    # 4000x3000 JPEG, draw_detections after a blur: the detector's input is the source decoded
    # at 1/4 beside the pipeline (decoder buffers, a strip, the 512 px input), not a copy of
    # the full-size image the pipeline has made by then (36 MB).
    data = jpeg(np.full((3000, 4000, 3), 90, np.uint8))
    ops = [blur(2), pb.Operation(draw_detections=pb.DrawDetections())]
    without, separate = detection_plans(settings, data, ops, (4, False))
    extra = separate.peak_bytes - without.peak_bytes
    assert 0 <= extra < 20 * 2**20
    decode_s = 1000 * 750 * planning.costs.DECODE_NS["jpeg"] * 1e-9
    # ... and the letterboxing of that input's own tiles (face hints, input tiles).
    tiles_s = 512 * 512 * TILE_PREPARE_NS * 1e-9
    assert separate.work_s - without.work_s == pytest.approx(
        decode_s + 1000 * 750 * planning.costs.THUMBNAIL_NS * 1e-9 + tiles_s
    )


def test_a_shared_decode_is_one_copy_of_the_shrunk_decode(settings):
    # Object gravity on the first resize: the pipeline decodes at the detector input's factor
    # and copies that decode (1000x750) to memory once for both.
    data = jpeg(np.full((3000, 4000, 3), 90, np.uint8))
    gravity = pb.Gravity(object=pb.ObjectGravity())
    ops = [resize(type=pb.RESIZING_TYPE_FILL, width=256, height=256, gravity=gravity)]
    without, shared = detection_plans(settings, data, ops, (4, True))
    assert shared.peak_bytes - without.peak_bytes < 8 * 2**20
    assert [s.input_in_memory for s in shared.steps] == [True]


def test_known_shapes_replace_an_estimate(settings):
    plan, request = make_plan(settings, SOURCE, [resize(width=200), blur(3)])
    header = open_header(SOURCE, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    source = source_info(header, shrink, len(SOURCE), settings)
    known = planning.plan_request(
        source, request.pipelines, "jpeg", settings, known_shapes={0: (20, 10)}
    )
    assert (plan.steps[0].shape.width, known.steps[0].shape.width) == (200, 20)
    assert (known.output.width, known.output.height) == (20, 10)
    assert known.work_s < plan.work_s
