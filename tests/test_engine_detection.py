"""Detection in the engine: one detector input for both RPCs (a shrink-on-load decode of the
source), detection started beside the pipeline and stopped with the request, the classes asked
for, the detection cache, and re-planning after a step whose shape only its data decides."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import pyvips

from tests.images import (
    decode,
    from_array,
    jpeg,
    png,
    request,
    ssim,
    textured,
    to_array,
    with_orientation,
)
from tests.test_engine import (
    FailingDetector,
    RedBlockDetector,
    assert_box_close,
    red_block_source,
)
from imagesvc import vips
from imagesvc.context import StepContext
from imagesvc.detection_cache import CacheKey, DetectionCache
from imagesvc.engine import Engine, open_header, plan_shrink_on_load, preview_shrink
from imagesvc.errors import DeadlineExceeded, RequestTooCostly
from imagesvc.geometry import Box
from imagesvc.ops.registry import OPS, OpSpec
from imagesvc.options import OutputSpec, PlannedOp, ProcessRequest, parse_process_request
from imagesvc.planning import OpEstimate, Shape
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference.detection import Detection

OBJECT = pb.Gravity(object=pb.ObjectGravity())
SMART = pb.Gravity(smart=pb.SmartGravity())


@pytest.fixture(scope="module", autouse=True)
def configured():
    vips.configure(Settings())


class CacheMetrics(NullMetrics):
    def __init__(self) -> None:
        self.lookups: list[bool] = []

    def detection_cache(self, hit: bool) -> None:
        self.lookups.append(hit)


@pytest.fixture
def make_engine():
    engines = []

    def make(detector=None, metrics=None, **overrides) -> Engine:
        settings = Settings(**{"workers": 2, **overrides})
        engine = Engine(settings, detector, metrics or NullMetrics())
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


async def process(engine: Engine, msg: pb.ProcessImageRequest, timeout: float = 30.0):
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    return await engine.process(parsed, time.monotonic() + timeout)


def fill(width: int, height: int, gravity=OBJECT) -> pb.Operation:
    return pb.Operation(
        resize=pb.Resize(type=pb.RESIZING_TYPE_FILL, width=width, height=height, gravity=gravity)
    )


def draw() -> pb.Operation:
    return pb.Operation(draw_detections=pb.DrawDetections())


def boxes(objects) -> list[tuple[str, float, Box]]:
    return [(o.class_name, o.confidence, o.box) for o in objects]


# --- One detector input for both RPCs ---------------------------------------------------------


SOURCES = {
    # The pipeline shares its shrink-on-load decode with the detector's input.
    "jpeg, shared decode": (
        jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200))),
        [fill(100, 150)],
    ),
    # The detector's input is decoded apart, beside a pipeline that decodes at full size.
    "jpeg, separate decode": (jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200))), [draw()]),
    "jpeg turned by EXIF": (
        jpeg(with_orientation(from_array(red_block_source(1600, 1200, (1350, 200, 200, 200))), 6)),
        [fill(300, 300), draw()],
    ),
    "png": (png(red_block_source(900, 700, (100, 500, 120, 90))), [draw()]),
}


@pytest.mark.parametrize("name", SOURCES)
async def test_both_rpcs_detect_on_the_same_input_and_agree(make_engine, name):
    data, ops = SOURCES[name]
    detector = RedBlockDetector()
    engine = make_engine(detector, detection_cache_entries=0)  # two real detections
    described = await engine.describe(data, True, time.monotonic() + 30)
    processed = await process(engine, request(data, ops, format=pb.IMAGE_FORMAT_PNG))
    assert len(detector.inputs) == 2 and detector.inputs[0] == detector.inputs[1]
    assert described.objects and boxes(processed.objects) == boxes(described.objects)


@pytest.mark.parametrize(
    ("fmt", "size", "with_min", "expected"),
    [
        ("jpeg", (3000, 2000), False, 4),  # 750 px: the last shrink keeping 512
        ("jpeg", (3000, 2000), True, 8),  # 375 px: a camera-size source may go to 288
        ("jpeg", (2000, 3000), True, 8),  # portrait: the long side counts
        ("jpeg", (2048, 1536), True, 4),  # 256 px would be under 288
        ("jpeg", (2304, 1728), True, 8),  # exactly 288
        ("jpeg", (6000, 4000), True, 8),  # the decoder's largest shrink: 750 px
        ("jpeg", (2000, 1500), True, 2),  # under 2048 px: the input keeps 512 (1000 px)
        ("jpeg", (1280, 960), True, 2),  # 640 px, never 320
        ("webp", (3000, 2000), True, 8),
        ("png", (3000, 2000), True, 1),  # no shrink-on-load
    ],
)
def test_the_first_input_shrink_keeps_512_or_288_on_a_camera_size_source(
    fmt, size, with_min, expected
):
    header = SimpleNamespace(format=fmt, size=size)
    assert preview_shrink(header, 512, 288 if with_min else None) == expected  # type: ignore[arg-type]


CAMERA = (3000, 2000, (2400, 300, 240, 240))


async def test_a_camera_size_thumbnail_shares_a_coarse_decode_with_its_detector(make_engine):
    data = jpeg(red_block_source(*CAMERA))
    detector = RedBlockDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    # A 100 px fill placed by the faces: the pipeline decodes at 1/8 and the detector's
    # input is that decode (375 px), made at load.
    thumbnail = [fill(100, 100)]
    parsed = parse_process_request(request(data, thumbnail), engine.settings, frozenset())
    run = engine._load(parsed, StepContext(engine.settings, time.monotonic() + 30, (3000, 2000)))
    assert run.preview is not None and run.preview.shape == (250, 375, 3)
    processed = await process(engine, request(data, thumbnail, format=pb.IMAGE_FORMAT_PNG))
    assert detector.inputs == [(250, 375, 3)]
    [face] = processed.objects
    assert_box_close(face.box, CAMERA[2], 10)
    # DescribeImage, a larger fill and a drawing get the full 512 px input, and agree.
    described = await engine.describe(data, True, time.monotonic() + 30)
    for ops in ([fill(1200, 800)], [fill(100, 100), draw()]):
        again = await process(engine, request(data, ops, format=pb.IMAGE_FORMAT_PNG))
        assert boxes(again.objects) == boxes(described.objects)
    assert detector.inputs[1:] == [(341, 512, 3)] * 3
    # Off (IMAGESVC_DETECTION_MIN_SIDE = the max side): the thumbnail gets 512 px too.
    full = RedBlockDetector()
    await process(make_engine(full, detection_min_side=512), request(data, thumbnail))
    assert full.inputs == [(341, 512, 3)]


class ThumbnailAwareDetector(RedBlockDetector):
    """Records what each call said of ``thumbnail`` (inference.client.Detector's keyword)."""

    def __init__(self) -> None:
        super().__init__()
        self.thumbnail: list[bool] = []

    async def detect(self, rgb, *, classes=None, timeout_s=None, thumbnail=False):
        self.thumbnail.append(thumbnail)
        return await super().detect(rgb, classes=classes, timeout_s=timeout_s)


async def test_only_a_camera_size_thumbnail_asks_the_detector_for_its_thumbnail_models(
    make_engine,
):
    detector = ThumbnailAwareDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    camera = jpeg(red_block_source(*CAMERA))
    processed = await process(engine, request(camera, [fill(100, 100)]))
    assert detector.thumbnail == [True]
    assert_box_close(processed.objects[0].box, CAMERA[2], 10)
    # DescribeImage, a large fill, a drawing: every model.
    await engine.describe(camera, True, time.monotonic() + 30)
    for ops in ([fill(1200, 800)], [fill(100, 100), draw()]):
        await process(engine, request(camera, ops))
    # A thumbnail of a source under 2048 px: every model too (not what was measured).
    small = jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200)))
    parsed = parse_process_request(request(small, [fill(40, 40)]), engine.settings, frozenset())
    header = open_header(small, engine.settings)
    shrink = plan_shrink_on_load(header, parsed.pipelines, auto_rotate=True)
    assert engine._thumbnail_placement(parsed, header, shrink)  # a thumbnail, yet too small
    await process(engine, request(small, [fill(40, 40)]))
    assert detector.thumbnail == [True, False, False, False, False]


async def test_detections_in_stored_pixels_when_the_pipeline_turns_the_image(make_engine):
    # IMAGESVC_AUTO_ROTATE=false: source pixels are the stored image's; the detector still sees
    # the image upright, and DescribeImage still answers in oriented pixels.
    stored = red_block_source(800, 600, (500, 100, 100, 100))
    data = jpeg(with_orientation(from_array(stored), 6))
    engine = make_engine(RedBlockDetector(), auto_rotate=False)
    processed = await process(engine, request(data, [draw()], format=pb.IMAGE_FORMAT_PNG))
    [found] = processed.objects
    assert (found.box.left, found.box.top, found.box.width, found.box.height) == pytest.approx(
        (500, 100, 100, 100), abs=6
    )
    [described] = (await engine.describe(data, True, time.monotonic() + 30)).objects
    assert (described.box.left, described.box.top) == pytest.approx((400, 500), abs=6)


class SizedThumbnailDetector(ThumbnailAwareDetector):
    """Says, as inference.client.Detector does, how large an image its thumbnail's models
    look at (192 px: the full-range face model) and how large its others do (a YOLO's 640)."""

    def input_side(self, classes, *, thumbnail=False):
        return 192 if thumbnail else 640


async def test_a_camera_size_thumbnail_input_is_no_larger_than_its_models_look_at(make_engine):
    detector = SizedThumbnailDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    camera = jpeg(red_block_source(*CAMERA))
    # Shared decode (JPEG at 1/8, 375 px): libvips brings it to 192 px at load.
    processed = await process(engine, request(camera, [fill(100, 100)]))
    assert detector.inputs == [(128, 192, 3)] and detector.thumbnail == [True]
    assert_box_close(processed.objects[0].box, CAMERA[2], 12)
    # A decode of its own (a PNG has no shrink-on-load): the same size.
    flat = png(red_block_source(*CAMERA))
    processed = await process(engine, request(flat, [fill(100, 100)]))
    assert detector.inputs[-1] == (128, 192, 3)
    assert_box_close(processed.objects[0].box, CAMERA[2], 12)
    # Everything else keeps IMAGESVC_DETECTION_MAX_SIDE (its models may look at more).
    await engine.describe(camera, True, time.monotonic() + 30)
    await process(engine, request(camera, [fill(1200, 800)]))
    small = jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200)))
    await process(engine, request(small, [fill(40, 40)]))
    assert detector.inputs[2:] == [(341, 512, 3), (341, 512, 3), (384, 512, 3)]
    # A detector that does not say gets the usual thumbnail input.
    plain = ThumbnailAwareDetector()
    await process(make_engine(plain, detection_cache_entries=0), request(camera, [fill(100, 100)]))
    assert plain.inputs == [(250, 375, 3)]


# --- Classes ---------------------------------------------------------------------------------


class TwoClassDetector(RedBlockDetector):
    """A face (the red block) and a "hand" beside it; honours ``classes`` as Triton would."""

    classes = frozenset({"face", "hand"})

    async def detect(self, rgb, *, classes=None, timeout_s=None):
        faces = await super().detect(rgb, classes=classes, timeout_s=timeout_s)
        found = [*faces, Detection("hand", 0.8, 1.0, 1.0, 10.0, 10.0)]
        return [d for d in found if classes is None or d.class_name in classes]


async def test_the_classes_asked_for_reach_the_detector(make_engine):
    detector = TwoClassDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    data = png(red_block_source(300, 200, (20, 20, 30, 30)))
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    result = await process(engine, request(data, [fill(100, 100, gravity)]))
    assert detector.classes_asked == [frozenset({"face"})]
    assert {o.class_name for o in result.objects} == {"face"}
    described = await engine.describe(
        data, True, time.monotonic() + 30, classes=frozenset({"hand"})
    )
    assert detector.classes_asked[-1] == frozenset({"hand"})
    assert {o.class_name for o in described.objects} == {"hand"}
    await engine.describe(data, True, time.monotonic() + 30)
    assert detector.classes_asked[-1] is None  # every class


async def test_a_detector_without_the_classes_keyword_still_works(make_engine):
    class OldDetector(TwoClassDetector):
        async def detect(self, rgb, *, timeout_s=None):
            return await super().detect(rgb, timeout_s=timeout_s)

    engine = make_engine(OldDetector())
    data = png(red_block_source(300, 200, (20, 20, 30, 30)))
    described = await engine.describe(
        data, True, time.monotonic() + 30, classes=frozenset({"face"})
    )
    assert {o.class_name for o in described.objects} == {"face"}  # the engine keeps the classes


# --- Cache -----------------------------------------------------------------------------------


async def test_describe_then_process_calls_the_detector_once(make_engine):
    detector, metrics = RedBlockDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    data = jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200)))
    described = await engine.describe(data, True, time.monotonic() + 30)
    processed = await process(engine, request(data, [fill(100, 150)], format=pb.IMAGE_FORMAT_PNG))
    assert len(detector.inputs) == 1
    assert metrics.lookups == [False, True]
    assert boxes(processed.objects) == boxes(described.objects)
    # The crop used the cached face: the block is in the result (see test_engine's twin).
    again = await process(engine, request(data, [fill(100, 150)], format=pb.IMAGE_FORMAT_PNG))
    assert again.data == processed.data and len(detector.inputs) == 1


async def test_every_class_serves_a_later_subset_but_not_the_reverse(make_engine):
    detector, metrics = TwoClassDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    data = png(red_block_source(300, 200, (20, 20, 30, 30)))
    face = frozenset({"face"})
    only_face = await engine.describe(data, True, time.monotonic() + 30, classes=face)
    everything = await engine.describe(data, True, time.monotonic() + 30)  # a miss: all classes
    subset = await engine.describe(data, True, time.monotonic() + 30, classes=frozenset({"hand"}))
    assert detector.classes_asked == [face, None]
    assert metrics.lookups == [False, False, True]
    assert {o.class_name for o in everything.objects} == {"face", "hand"}
    assert boxes(subset.objects) == [b for b in boxes(everything.objects) if b[0] == "hand"]
    assert boxes(only_face.objects) == [b for b in boxes(everything.objects) if b[0] == "face"]


async def test_failures_are_not_cached(make_engine):
    detector, metrics = FailingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    data = png(red_block_source(300, 200))
    for _ in range(2):
        described = await engine.describe(data, True, time.monotonic() + 30)
        assert [d.reason for d in described.degradations] == ["DETECTION_UNAVAILABLE"]
    assert detector.calls == 2 and metrics.lookups == [False, False]


async def test_other_bytes_or_settings_miss(make_engine):
    detector = RedBlockDetector()
    engine = make_engine(detector)
    first, second = png(red_block_source(300, 200)), png(red_block_source(301, 200))
    for data in (first, second, first):
        await engine.describe(data, True, time.monotonic() + 30)
    assert len(detector.inputs) == 2
    # The detector's configuration is part of the key.
    small = make_engine(detector, detection_max_side=128)
    assert small._detector_identity != engine._detector_identity
    off = make_engine(detector, detection_cache_entries=0)
    await off.describe(first, True, time.monotonic() + 30)
    await off.describe(first, True, time.monotonic() + 30)
    assert len(detector.inputs) == 4


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    cache = DetectionCache(2)
    keys = [CacheKey.of(bytes([i]), None, "d") for i in range(3)]
    cache.put(keys[0], ())
    cache.put(keys[1], ())
    assert cache.get(keys[0]) == ()  # 0 is now the most recent
    cache.put(keys[2], ())
    assert len(cache) == 2 and cache.get(keys[1]) is None and cache.get(keys[0]) == ()
    disabled = DetectionCache(0)
    disabled.put(keys[0], ())
    assert not disabled.enabled and disabled.get(keys[0]) is None


# --- Detection beside the pipeline -------------------------------------------------------------


def probe_spec(reached: threading.Event, detector_entered: threading.Event) -> OpSpec:
    """A step that does not need detections and records whether detection had started when it
    ran (waiting for it a while, so a sequential engine fails the test instead of racing)."""

    def run(image, options, ctx):
        reached.set()
        options["overlapped"] = detector_entered.wait(10)
        return image

    return OpSpec(
        parse=lambda *args: None,
        run=run,
        estimate=lambda shape, options, env: OpEstimate(shape, 0.0),
    )


class EnteringDetector(RedBlockDetector):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def detect(self, rgb, *, classes=None, timeout_s=None):
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().detect(rgb, classes=classes, timeout_s=timeout_s)


def planned_request(data: bytes, *ops: PlannedOp) -> ProcessRequest:
    return ProcessRequest(data, (ops,), OutputSpec("png", None))


def draw_op(settings: Settings) -> PlannedOp:
    from imagesvc.options import ParseContext, Violations

    pctx = ParseContext(settings, frozenset({"face"}), Violations())
    spec = OPS["draw_detections"]
    return PlannedOp("draw_detections", spec, spec.parse(pb.DrawDetections(), "x", pctx))


async def test_detection_runs_while_the_steps_before_it_do(make_engine):
    detector = EnteringDetector()
    engine = make_engine(detector, workers=2)
    reached = threading.Event()
    options: dict = {}
    probe = PlannedOp("probe", probe_spec(reached, detector.entered), options)
    data = jpeg(red_block_source(800, 600))
    task = asyncio.ensure_future(
        engine.process(
            planned_request(data, probe, draw_op(engine.settings)), time.monotonic() + 30
        )
    )
    await asyncio.wait_for(asyncio.to_thread(reached.wait, 10), 15)
    await asyncio.wait_for(asyncio.to_thread(detector.entered.wait, 10), 15)
    detector.release.set()
    result = await asyncio.wait_for(task, 30)
    assert options["overlapped"] is True  # Triton was called while the probe step ran
    assert len(result.objects) == 1


class StepMetrics(NullMetrics):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def step(self, op: str, seconds: float) -> None:
        self.steps.append(op)


async def test_a_fill_scales_while_its_detections_are_awaited(make_engine):
    # Object gravity's crop waits for Triton; the scaling before it does not, so it runs (to
    # memory) while the detector holds the answer, and the crop is the one a cached answer
    # gives.
    data = jpeg(red_block_source(1600, 1200, (1350, 200, 200, 200)))
    msg = request(data, [fill(100, 150)], format=pb.IMAGE_FORMAT_PNG)
    detector, metrics = EnteringDetector(), StepMetrics()
    engine = make_engine(detector, metrics)
    task = asyncio.ensure_future(process(engine, msg))
    await asyncio.wait_for(asyncio.to_thread(detector.entered.wait, 10), 15)
    for _ in range(200):  # the prepare hop finishes while the detector still holds
        if "resize.prepare" in metrics.steps:
            break
        await asyncio.sleep(0.01)
    assert "resize.prepare" in metrics.steps and "resize" not in metrics.steps
    detector.release.set()
    first = await asyncio.wait_for(task, 30)
    again = await process(engine, msg)  # cached detections: no prepare hop
    assert metrics.steps.count("resize.prepare") == 1
    assert boxes(first.objects) == boxes(again.objects)
    a, b = to_array(decode(first.data)), to_array(decode(again.data))
    # The same window (a cache hit may decode at another shrink: pixels within rounding).
    assert a.shape == b.shape == (150, 100, 3) and ssim(a, b) > 0.98
    red = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)
    assert red.sum() > 0.5 * 25 * 25  # the detected block (~25 px at this scale) was kept


@pytest.mark.parametrize("workers, ahead", [(2, True), (1, False)])
async def test_the_smart_fallback_is_computed_while_detections_are_awaited(
    make_engine, monkeypatch, workers, ahead
):
    # A photo without the objects: the crop falls back to smart gravity. With a worker to
    # spare, its attention centre is computed in the prepare hop, before Triton answers; a
    # server whose workers are all taken (one worker, one request) computes it after, only
    # because it is needed. The crop is the same either way.
    from imagesvc.ops import gravity

    calls: list[bool] = []  # per attention pass: had the detector answered yet?
    original = gravity.smart_centre

    def recording(image, crop_w, crop_h):
        calls.append(detector.release.is_set())
        return original(image, crop_w, crop_h)

    monkeypatch.setattr(gravity, "smart_centre", recording)
    source = red_block_source(1600, 1200, (0, 0, 0, 0))  # nothing red: nothing detected
    source[300:500, 1300:1500] = (20, 60, 230)  # a saturated patch attention goes for
    msg = request(jpeg(source), [fill(100, 150)], format=pb.IMAGE_FORMAT_PNG)
    detector = EnteringDetector()
    engine = make_engine(detector, StepMetrics(), workers=workers)
    task = asyncio.ensure_future(process(engine, msg))
    await asyncio.wait_for(asyncio.to_thread(detector.entered.wait, 10), 15)
    for _ in range(200):  # the prepare hop ends while the detector holds its answer
        if engine.metrics.steps:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    detector.release.set()
    result = await asyncio.wait_for(task, 30)
    assert result.objects == ()
    assert calls == [not ahead]  # one attention pass, ahead of the answer or after it
    smart = await process(
        make_engine(None, workers=workers),
        request(jpeg(source), [fill(100, 150, gravity=SMART)], format=pb.IMAGE_FORMAT_PNG),
    )
    a, b = to_array(decode(result.data)), to_array(decode(smart.data))
    assert a.shape == b.shape == (150, 100, 3) and ssim(a, b) > 0.98
    blue = (a[..., 2] > 180) & (a[..., 0] < 80)
    assert blue.sum() > 0.5 * 12 * 12  # the patch (~12 px at this scale) is in the crop


def stray_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks started since ``before`` and still pending, but for gRPC's own calls: the loop is
    the test session's, where servers started by other tests poll Triton meanwhile."""

    def from_grpc(task: asyncio.Task) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return "/grpc/" in getattr(code, "co_filename", "")

    return {task for task in asyncio.all_tasks() - before if not from_grpc(task)}


async def test_a_cancelled_request_cancels_its_detection(make_engine):
    detector = EnteringDetector()
    engine = make_engine(detector)
    before = asyncio.all_tasks()  # the event loop may be shared with other tests' servers
    data = jpeg(red_block_source(800, 600))
    task = asyncio.ensure_future(process(engine, request(data, [draw()])))
    await asyncio.wait_for(asyncio.to_thread(detector.entered.wait, 10), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert detector.cancelled.is_set()
    assert stray_tasks(before) == set()  # no stray detection task


async def test_a_failing_pipeline_leaves_no_detection_behind(make_engine):
    detector = EnteringDetector()
    engine = make_engine(detector)
    before = asyncio.all_tasks()

    def explode(image, options, ctx):
        assert detector.entered.wait(10)
        raise ValueError("boom")

    spec = OpSpec(lambda *a: None, explode, lambda shape, options, env: OpEstimate(shape, 0.0))
    data = jpeg(red_block_source(800, 600))
    request_ = planned_request(data, PlannedOp("explode", spec, None), draw_op(engine.settings))
    with pytest.raises(ValueError):
        await engine.process(request_, time.monotonic() + 30)
    assert detector.cancelled.is_set()
    assert stray_tasks(before) == set()


# --- Re-planning after a step whose shape the data decides ---------------------------------------


@dataclass(frozen=True)
class DataCropOptions:
    claimed: tuple[int, int]  # the upper bound the estimate claims (honest: the input's size)
    actual: tuple[int, int]  # what the data gives


def data_crop_spec(seen: list[tuple[int, int]]) -> OpSpec:
    def run(image, options, ctx):
        seen.append((image.width, image.height))
        width, height = options.actual
        if (width, height) == (image.width, image.height):
            return image
        if width <= image.width and height <= image.height:
            return image.extract_area(0, 0, width, height)
        return image.embed(0, 0, width, height)

    def estimate(shape: Shape, options, env) -> OpEstimate:
        return OpEstimate(shape.sized(*options.claimed), 0.0, shape_known=False)

    return OpSpec(lambda *a: None, run, estimate)


def enlarge_op(settings: Settings, width: int, height: int) -> PlannedOp:
    from imagesvc.options import ParseContext, Violations

    pctx = ParseContext(settings, frozenset(), Violations())
    spec = OPS["resize"]
    msg = pb.Resize(type=pb.RESIZING_TYPE_FORCE, width=width, height=height, enlarge=True)
    return PlannedOp("resize", spec, spec.parse(msg, "x", pctx))


async def test_the_rest_is_planned_again_from_the_image_the_step_produced(make_engine, monkeypatch):
    engine = make_engine()
    data = png(textured(200, 100))
    options = DataCropOptions(claimed=(200, 100), actual=(50, 40))
    crop = PlannedOp("data_crop", data_crop_spec([]), options)
    plans = []
    from imagesvc import planning

    original = planning.plan_request

    def recording(*args, **kwargs):
        plan = original(*args, **kwargs)
        plans.append((kwargs.get("known_shapes"), plan))
        return plan

    monkeypatch.setattr(planning, "plan_request", recording)
    grow = enlarge_op(engine.settings, 400, 300)
    result = await engine.process(planned_request(data, crop, grow), time.monotonic() + 30)
    assert (result.width, result.height) == (400, 300)
    [(none, first), (known, second)] = plans
    assert none is None and first.steps[0].replan_after
    assert known == {0: (50, 40)}
    assert (second.steps[0].shape.width, second.steps[0].shape.height) == (50, 40)
    assert not second.steps[0].replan_after
    assert second.work_s < first.work_s  # the enlargement reads fewer pixels


async def test_a_re_plan_over_the_budget_stops_the_request_before_the_next_step(make_engine):
    # A step that turns out larger than its estimate said (a broken upper bound): the re-plan
    # sees the real size and refuses the enlargement that follows before it runs.
    engine = make_engine(max_result_mp=1.0)
    seen: list[tuple[int, int]] = []
    crop = PlannedOp(
        "data_crop", data_crop_spec(seen), DataCropOptions(claimed=(10, 10), actual=(1000, 900))
    )
    ran: list[tuple[int, int]] = []
    spy = OpSpec(
        lambda *a: None,
        lambda image, options, ctx: ran.append((image.width, image.height)) or image,
        lambda shape, options, env: OpEstimate(shape.sized(shape.width * 2, shape.height * 2), 0.0),
    )
    double = PlannedOp("double", spy, None)
    data = png(textured(200, 100))
    with pytest.raises(RequestTooCostly) as caught:
        await engine.process(planned_request(data, crop, double), time.monotonic() + 30)
    assert seen == [(200, 100)] and ran == []  # the step after the re-plan never ran
    assert caught.value.metadata["limit"] == "max_result_mp"
    assert caught.value.metadata["largest_at"] == "pipelines[0].operations[1].double"


# --- Deadlines -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_png() -> bytes:
    # No shrink-on-load and too large to share: the detector's input decodes all of it, apart
    # (~0.35 s here: a compressible image, whose inflate takes time, unlike random bytes').
    return png(textured(6000, 6000))


async def test_the_deadline_stops_the_detector_input_decoded_beside_the_pipeline(big_png):
    # No cache: hashing these 75 MB (a minimum of work, not killable) is not what is measured.
    # One worker: the pool takes the detector's input first, the pipeline waits behind it.
    # A budget that admits it (the 6000x6000 PNG encode is planned at ~1 GB): the deadline is
    # what is measured here, not the refusal.
    settings = Settings(workers=1, detection_cache_entries=0, max_request_memory_mb=2048)
    engine = Engine(settings, RedBlockDetector(), NullMetrics())
    try:
        deadline = time.monotonic() + 0.1
        parsed = parse_process_request(
            request(big_png, [draw()]), engine.settings, engine.known_classes
        )
        with pytest.raises(DeadlineExceeded) as caught:
            await engine.process(parsed, deadline)
        late = time.monotonic() - deadline
    finally:
        engine.close()
    del caught
    gc.collect()  # free the killed decoder here: its libvips warnings log through Python
    print(f"detector input beside the pipeline: free {late * 1000:.0f} ms after the deadline")
    assert late < 0.5


def test_kill_stops_images_watched_beside_the_pipeline():
    ctx = StepContext(Settings(), time.monotonic() + 60, (1, 1))
    image = pyvips.Image.black(4000, 4000).gaussblur(30)
    ctx.watch_side(image)
    ctx.kill()
    with pytest.raises(pyvips.Error):
        image.avg()
    late = pyvips.Image.black(10, 10).gaussblur(2)
    ctx.watch_side(late)  # named after the kill: killed at once
    with pytest.raises(pyvips.Error):
        late.avg()
