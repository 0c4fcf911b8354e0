"""The tiled pass for small faces in the engine (`Engine._detect_objects`, `_tiled_pass`,
`tiled_input_plan`), with a fake detector whose two passes find red blocks: the first pass
misses blocks too small at its input, as BlazeFace misses small faces; its face hints see
smaller blocks of the same input, as the full-range model does on tiles of it; the tiled pass
finds every block of the larger copy it is given. The real client's tiled pass and hints over
Triton are tested in tests/inference/test_tiled_pass.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest
from skimage.measure import label, regionprops

from tests.images import from_array, jpeg, png, request, with_orientation
from imagesvc import planning, vips
from imagesvc.engine import Engine, open_header
from imagesvc.errors import DeadlineExceeded
from imagesvc.geometry import Box
from imagesvc.ops.auto_rotate import orientation_transform
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference import face_refine
from inference.detection import Detection
from inference.errors import InferenceError, InferenceUnavailable

RED = (220, 20, 30)
FACE = frozenset({"face"})
HAND = frozenset({"hand"})

# A 4400x3000 scene (stored pixels; left, top, width, height). The first pass sees it at
# 512x349, 0.116 times smaller; the tiled pass at 2048x1396, 0.465 times.
SCENE = (4400, 3000)
# 8 px tall at the first pass's input: the fake first pass misses them; 33 px in the tiled copy.
SMALL = ((400, 500, 70, 70), (2000, 1400, 70, 70), (3600, 2400, 70, 70))
# 23 px at the first pass's input: found there, but smaller than face_refine.LARGE_FACE_PX.
MEDIUM = (1000, 2200, 200, 200)
# 47 px at the first pass's input: a large face, so the rule skips the tiled pass.
LARGE = (3000, 300, 400, 400)
# The fake first pass's smallest block (at its input), and its other-class detection.
MIN_FIRST_PX = 16
# The fake face hints' smallest block (at the first pass's input): SMALL's are 8 px there.
MIN_HINT_PX = 6
HAND_BOX = (1.0, 1.0, 10.0, 10.0)


def red_blocks(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Every red block of ``rgb`` as (left, top, width, height)."""
    pixels = rgb.astype(int)
    mask = (pixels[:, :, 0] > 160) & (pixels[:, :, 1] < 90) & (pixels[:, :, 2] < 90)
    blocks = []
    for region in regionprops(label(mask)):
        top, left, bottom, right = region.bbox
        blocks.append((float(left), float(top), float(right - left), float(bottom - top)))
    return blocks


def _iou(a: Detection, b: Detection) -> float:
    w = min(a.right, b.right) - max(a.left, b.left)
    h = min(a.bottom, b.bottom) - max(a.top, b.top)
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / (a.width * a.height + b.width * b.height - w * h)


@dataclass
class TileCall:
    shape: tuple[int, ...]
    first: list[Detection]
    first_size: tuple[int, int]
    timeout_s: float | None
    at: float  # time.monotonic() of the call
    grid: tuple[int, int] = face_refine.TILE_GRID


class TilingDetector:
    """inference.client.Detector's two passes, on red blocks: ``detect`` finds the blocks at
    least MIN_FIRST_PX tall (score 0.9) and a "hand"; ``face_hints`` the blocks at least
    MIN_HINT_PX tall of the same input (score 0.5); ``detect_tiles`` finds every block of
    its larger input, maps them to ``first_size`` pixels (score 0.7) and returns them with
    ``first``, a block both found once."""

    classes = frozenset({"face", "hand"})

    def __init__(
        self,
        tiles_error: Exception | None = None,
        *,
        can_tile: bool = True,
        hints_error: Exception | None = None,
    ) -> None:
        self.can_tile = can_tile
        self.tiles_error = tiles_error
        self.hints_error = hints_error
        self.first_inputs: list[tuple[int, ...]] = []
        self.hint_calls: list[tuple[tuple[int, ...], float | None]] = []
        self.tile_calls: list[TileCall] = []

    async def face_hints(self, rgb, *, timeout_s=None) -> list[Detection]:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.hint_calls.append((rgb.shape, timeout_s))
        await asyncio.sleep(0)
        if self.hints_error is not None:
            raise self.hints_error
        return [
            Detection("face", 0.5, *block, model="hints")
            for block in red_blocks(rgb)
            if block[3] >= MIN_HINT_PX
        ]

    async def detect(self, rgb, *, classes=None, timeout_s=None) -> list[Detection]:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.first_inputs.append(rgb.shape)
        found = [
            Detection("face", 0.9, *block, model="first")
            for block in red_blocks(rgb)
            if block[3] >= MIN_FIRST_PX
        ]
        found.append(Detection("hand", 0.8, *HAND_BOX, model="palm"))
        return [d for d in found if classes is None or d.class_name in classes]

    async def detect_tiles(
        self, rgb, *, first, first_size, timeout_s=None, grid=face_refine.TILE_GRID
    ) -> list[Detection]:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.tile_calls.append(
            TileCall(rgb.shape, list(first), first_size, timeout_s, time.monotonic(), grid)
        )
        await asyncio.sleep(0)
        if self.tiles_error is not None:
            raise self.tiles_error
        sx, sy = rgb.shape[1] / first_size[0], rgb.shape[0] / first_size[1]
        found = [
            Detection("face", 0.7, left / sx, top / sy, w / sx, h / sy, model="tiles")
            for left, top, w, h in red_blocks(rgb)
        ]
        faces = [d for d in first if d.class_name == "face"]
        new = [d for d in found if all(_iou(d, f) <= 0.3 for f in faces)]
        return sorted([*first, *new], key=lambda d: -d.confidence)


def scene(*blocks: tuple[int, int, int, int], size=SCENE) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(8)
    array = np.empty((height, width, 3), np.uint8)
    array[:] = (90, 110, 100)
    array += rng.integers(0, 6, (height, width, 1), dtype=np.uint8)
    for left, top, w, h in blocks:
        array[top : top + h, left : left + w] = RED
    return array


@pytest.fixture(scope="module", autouse=True)
def configured():
    vips.configure(Settings())


@pytest.fixture(scope="module")
def small_faces() -> bytes:
    return jpeg(scene(*SMALL, MEDIUM), Q=90)


@pytest.fixture(scope="module")
def small_faces_turned() -> bytes:
    """The same scene stored as it is, tagged EXIF orientation 6 (upright: 3000x4400)."""
    return jpeg(with_orientation(from_array(scene(*SMALL, MEDIUM)), 6), Q=90)


@pytest.fixture(scope="module")
def large_face() -> bytes:
    return jpeg(scene(*SMALL, LARGE), Q=90)


@pytest.fixture(scope="module")
def crowd() -> bytes:
    """Only the small blocks: the first pass finds no face, the hints find MIN_FACE_HINTS."""
    assert len(SMALL) == face_refine.MIN_FACE_HINTS
    return jpeg(scene(*SMALL), Q=90)


@pytest.fixture(scope="module")
def face_free() -> bytes:
    return jpeg(scene(), Q=90)


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


class CacheMetrics(NullMetrics):
    def __init__(self) -> None:
        self.lookups: list[bool] = []
        self.small_face_passes: list[str] = []

    def detection_cache(self, hit: bool) -> None:
        self.lookups.append(hit)

    def small_face_pass(self, outcome: str) -> None:
        self.small_face_passes.append(outcome)


async def describe(engine: Engine, data: bytes, classes=None, timeout: float = 30.0):
    return await engine.describe(data, True, time.monotonic() + timeout, classes=classes)


def object_gravity_fill(classes=(), size=(660, 450)) -> list[pb.Operation]:
    """An object-gravity fill; at the default size (0.15 of the scene) a face under
    face_refine.FIRST_PASS_MIN_FACE_PX at the first pass's input would come out 26 px: the
    tiled pass may run (face_refine.tiled_faces_visible)."""
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=list(classes)))
    fill = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=size[0], height=size[1], gravity=gravity)
    return [pb.Operation(resize=fill)]


async def process(engine: Engine, data: bytes, ops, timeout: float = 30.0):
    msg = request(data, ops, format=pb.IMAGE_FORMAT_JPEG)
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    return await engine.process(parsed, time.monotonic() + timeout)


def oriented(block, orientation: int) -> Box:
    return orientation_transform(orientation, *SCENE).box(Box(*map(float, block)))


def face_boxes(objects) -> list[Box]:
    return sorted((o.box for o in objects if o.class_name == "face"), key=lambda b: (b.top, b.left))


def assert_found(objects, block: Box, tolerance: float) -> None:
    near = [
        box
        for box in face_boxes(objects)
        if max(
            abs(box.left - block.left),
            abs(box.top - block.top),
            abs(box.right - block.right),
            abs(box.bottom - block.bottom),
        )
        <= tolerance
    ]
    assert len(near) == 1, f"{block} not found once within {tolerance} px in {face_boxes(objects)}"


def planned_input_shape(orientation: int, side: int) -> tuple[int, int, int]:
    """(height, width, 3) of a detector input with long side ``side`` for SCENE, upright."""
    width, height = SCENE
    short = round(min(width, height) * side / max(width, height))
    return (short, side, 3) if orientation == 1 else (side, short, 3)


# --- The tiled pass runs when the rule says ----------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 6])
async def test_small_faces_come_from_the_tiled_pass_in_oriented_source_pixels(
    make_engine, small_faces, small_faces_turned, orientation
):
    data = small_faces if orientation == 1 else small_faces_turned
    detector = TilingDetector()
    engine = make_engine(detector)
    header = open_header(data, engine.settings)
    # The planned input: 2048 px, decoded at 1/2 (2200x1500, the largest shrink keeping 2048).
    assert engine.tiled_input_plan(header, None) == (2048, 2)
    described = await describe(engine, data)

    assert detector.first_inputs == [planned_input_shape(orientation, 512)]
    # The first pass found a face, a small one: the rule needs no hints to tile.
    assert detector.hint_calls == []
    [call] = detector.tile_calls
    # The tiled input is made at the planned side, turned upright like the first one.
    assert call.shape == planned_input_shape(orientation, 2048)
    first_h, first_w = detector.first_inputs[0][:2]
    assert call.first_size == (first_w, first_h)
    # The first pass's detections, every class, as the detector gave them.
    assert [d.class_name for d in call.first] == ["face", "hand"]
    assert [d.model for d in call.first] == ["first", "palm"]
    assert call.timeout_s is not None and 0 < call.timeout_s <= 30.0

    objects = described.objects
    assert described.degradations == ()
    assert sorted(o.class_name for o in objects) == ["face"] * 4 + ["hand"]
    # The small blocks come from the tiles, mapped back to oriented source pixels.
    for block in SMALL:
        assert_found(objects, oriented(block, orientation), tolerance=8)
    assert sorted(o.confidence for o in objects if o.model == "tiles") == [0.7] * 3
    # The medium block once, as the first pass found it (8.6 source px per input px).
    assert_found(objects, oriented(MEDIUM, orientation), tolerance=20)
    [medium] = [o for o in objects if o.model == "first"]
    assert medium.confidence == 0.9
    # Other classes pass through, mapped to source pixels like the faces.
    [hand] = [o for o in objects if o.class_name == "hand"]
    scale = (described.width if orientation == 1 else described.height) / first_w
    assert hand.box.left == pytest.approx(HAND_BOX[0] * scale, rel=0.02)
    assert hand.box.width == pytest.approx(HAND_BOX[2] * scale, rel=0.02)


async def test_process_image_runs_the_tiled_pass_and_agrees_with_describe(make_engine, small_faces):
    detector = TilingDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    processed = await process(engine, small_faces, object_gravity_fill())
    described = await describe(engine, small_faces)
    assert len(detector.tile_calls) == 2
    assert detector.tile_calls[0].shape == detector.tile_calls[1].shape == (1396, 2048, 3)
    assert processed.degradations == ()
    assert face_boxes(processed.objects) == face_boxes(described.objects)
    assert len(face_boxes(processed.objects)) == 4


async def test_a_small_face_found_by_the_first_pass_still_runs_it_when_face_is_asked(
    make_engine, small_faces
):
    detector = TilingDetector()
    engine = make_engine(detector)
    described = await describe(engine, small_faces, classes=FACE)
    [call] = detector.tile_calls
    assert [d.class_name for d in call.first] == ["face"]  # the medium block, < 40 px
    assert sorted(o.class_name for o in described.objects) == ["face"] * 4


async def test_no_face_found_but_enough_face_hints_runs_it(make_engine, crowd):
    # A crowd too small for the first pass: its hints, on the first pass's own input, say tile.
    detector, metrics = TilingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    described = await describe(engine, crowd)
    first_input = planned_input_shape(1, 512)
    assert detector.first_inputs == [first_input]
    [(hint_input, hint_timeout)] = detector.hint_calls
    assert hint_input == first_input
    assert hint_timeout is not None and 0 < hint_timeout <= 30.0
    [call] = detector.tile_calls
    assert call.shape == planned_input_shape(1, 2048)
    assert [d.class_name for d in call.first] == ["hand"]
    # The faces are the tiled pass's; the hints never come out as detections.
    assert sorted(o.model for o in described.objects if o.class_name == "face") == ["tiles"] * 3
    for block in SMALL:
        assert_found(described.objects, oriented(block, 1), tolerance=8)
    assert described.degradations == ()
    await describe(engine, crowd)
    assert metrics.lookups == [False, True]


# --- ... and only then -------------------------------------------------------------------------


async def test_no_tiled_pass_on_a_face_free_photo(make_engine, face_free):
    # The photo the tiled pass used to cost most on: large, no face, no hint.
    detector, metrics = TilingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    assert engine.tiled_input_plan(open_header(face_free, engine.settings), None) is not None
    described = await describe(engine, face_free)
    assert len(detector.hint_calls) == 1 and detector.tile_calls == []
    assert [o.class_name for o in described.objects] == ["hand"]
    assert described.degradations == ()
    assert metrics.small_face_passes == ["not_needed"]
    # A complete answer: cached, and the next request asks neither the hints nor the tiles.
    processed = await process(engine, face_free, object_gravity_fill())
    assert metrics.lookups == [False, True]
    assert len(detector.hint_calls) == 1 and detector.tile_calls == []
    assert processed.degradations == ()


async def test_fewer_face_hints_than_the_rule_wants_skip_it(make_engine):
    # Two small faces the first pass misses: too few hints (the price of not tiling textures).
    assert face_refine.MIN_FACE_HINTS > 2
    data = jpeg(scene(*SMALL[:2]), Q=90)
    detector = TilingDetector()
    described = await describe(make_engine(detector), data)
    assert len(detector.hint_calls) == 1 and detector.tile_calls == []
    assert face_boxes(described.objects) == []


class NoHints(TilingDetector):
    """A detector with the tiled pass but without face hints (written before them)."""

    face_hints = None


async def test_a_detector_without_face_hints_tiles_whenever_no_face_is_large(
    make_engine, face_free
):
    detector = NoHints()
    described = await describe(make_engine(detector), face_free)
    assert len(detector.tile_calls) == 1
    assert [o.class_name for o in described.objects] == ["hand"]


@pytest.mark.parametrize(
    "error",
    [
        InferenceUnavailable("TRITON_UNAVAILABLE", "triton went away"),
        InferenceError("TRITON_BAD_RESPONSE", "output tensor is empty"),
    ],
    ids=["unavailable", "broken"],
)
async def test_failed_face_hints_keep_the_first_pass_undegraded_and_uncached(
    make_engine, crowd, error
):
    detector, metrics = TilingDetector(hints_error=error), CacheMetrics()
    engine = make_engine(detector, metrics)
    for _ in range(2):
        described = await describe(engine, crowd)
        assert described.degradations == ()
        assert [o.model for o in described.objects] == ["palm"]
    assert metrics.lookups == [False, False]
    assert len(detector.hint_calls) == 2 and detector.tile_calls == []
    assert metrics.small_face_passes == ["unavailable"] * 2


async def test_no_tiled_pass_when_the_first_pass_found_a_large_face(make_engine, large_face):
    detector = TilingDetector()
    engine = make_engine(detector)
    # The source allows it: only the first pass's answer decides.
    assert engine.tiled_input_plan(open_header(large_face, engine.settings), None) is not None
    described = await describe(engine, large_face)
    assert detector.tile_calls == [] and detector.hint_calls == []
    [found] = face_boxes(described.objects)  # the small faces stay missed
    assert_found(described.objects, Box(*map(float, LARGE)), tolerance=20)
    assert found.height > face_refine.LARGE_FACE_PX * SCENE[0] / 512


@pytest.mark.parametrize(
    "case", ["face not asked", "source too small to tile", "setting off", "detector cannot tile"]
)
async def test_no_tiled_pass_when_it_cannot_help(make_engine, small_faces, case):
    detector = TilingDetector(can_tile=case != "detector cannot tile")
    settings = {"detection_tiled_pass": False} if case == "setting off" else {}
    engine = make_engine(detector, CacheMetrics(), **settings)
    classes = HAND if case == "face not asked" else None
    data = small_faces
    if case == "source too small to tile":
        # 360 px: no larger copy, and its own tiles would be under the model's 192 px input.
        data = png(scene((100, 100, 8, 8), (250, 150, 8, 8), size=(360, 240)))
    header = open_header(data, engine.settings)
    assert engine.tiled_input_plan(header, classes) is None
    assert not engine.input_tiles_possible(header, classes)
    described = await describe(engine, data, classes=classes)
    assert len(detector.first_inputs) == 1 and detector.tile_calls == []
    assert detector.hint_calls == []
    assert engine.metrics.small_face_passes == []  # not a source the pass could run on
    expected_faces = 1 if case in ("setting off", "detector cannot tile") else 0
    assert len(face_boxes(described.objects)) == expected_faces  # only MEDIUM, first pass
    assert described.degradations == ()


# 760 px: under 1.5 x the 512 px first input, so no larger copy; its 16 px blocks are 11 px
# at that input, under the fake first pass's MIN_FIRST_PX.
SMALL_SOURCE = (760, 500)
SMALL_SOURCE_BLOCKS = ((100, 100, 16, 16), (500, 300, 16, 16))


async def test_a_source_too_small_for_a_larger_copy_is_tiled_on_its_own_input(make_engine):
    detector = TilingDetector()
    engine = make_engine(detector, CacheMetrics())
    data = png(scene(*SMALL_SOURCE_BLOCKS, size=SMALL_SOURCE))
    header = open_header(data, engine.settings)
    assert engine.tiled_input_plan(header, None) is None
    assert engine.input_tiles_possible(header, None)
    described = await describe(engine, data)
    [call] = detector.tile_calls
    # The first input itself, on the hints' grid; no hints, no second decode.
    assert call.shape == detector.first_inputs[0]
    assert call.first_size == (call.shape[1], call.shape[0])
    assert call.grid == face_refine.HINT_GRID
    assert detector.hint_calls == []
    assert engine.metrics.small_face_passes == ["tiled"]
    for block in SMALL_SOURCE_BLOCKS:
        assert_found(described.objects, Box(*map(float, block)), tolerance=3)
    assert described.degradations == ()


async def test_a_large_face_on_a_small_source_needs_no_tiles(make_engine):
    detector = TilingDetector()
    engine = make_engine(detector, CacheMetrics())
    # 64 px at the source, 43 px at the 512 px input: a large face.
    data = png(scene((100, 100, 64, 64), (500, 300, 16, 16), size=SMALL_SOURCE))
    described = await describe(engine, data)
    assert detector.tile_calls == [] and detector.hint_calls == []
    assert engine.metrics.small_face_passes == ["not_needed"]
    assert len(face_boxes(described.objects)) == 1


@pytest.mark.parametrize(
    ("size", "tiled"),
    [((160, 120), False), ((600, 400), True)],
    ids=["thumbnail", "near full size"],
)
async def test_input_tiles_follow_the_faces_an_output_can_show(make_engine, size, tiled):
    # A 160 px fill scales the source by 0.24: a face the input tiles add (under
    # LARGE_FACE_PX, 40 px at the 512 px input: 59 px at the source) comes out under 16 px;
    # at 600 px (0.8), up to 47 px.
    detector = TilingDetector()
    engine = make_engine(detector, CacheMetrics())
    data = png(scene(*SMALL_SOURCE_BLOCKS, size=SMALL_SOURCE))
    await process(engine, data, object_gravity_fill(size=size))
    assert len(detector.tile_calls) == (1 if tiled else 0)
    assert engine.metrics.small_face_passes == ["tiled" if tiled else "skipped_small_output"]


async def test_input_tiles_that_fail_keep_the_first_pass(make_engine):
    detector = TilingDetector(InferenceUnavailable("TRITON_UNAVAILABLE", "gone"))
    engine = make_engine(detector, CacheMetrics())
    described = await describe(engine, png(scene(*SMALL_SOURCE_BLOCKS, size=SMALL_SOURCE)))
    assert len(detector.tile_calls) == 1
    assert face_boxes(described.objects) == [] and described.degradations == ()
    assert engine.metrics.small_face_passes == ["unavailable"]


# --- Failures, the cache, the plan -------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        InferenceUnavailable("TRITON_UNAVAILABLE", "triton went away"),
        InferenceError("TRITON_BAD_RESPONSE", "output tensor is empty"),
    ],
    ids=["unavailable", "broken"],
)
async def test_a_failed_tiled_pass_keeps_the_first_pass_undegraded_and_uncached(
    make_engine, small_faces, error
):
    detector, metrics = TilingDetector(error), CacheMetrics()
    engine = make_engine(detector, metrics)
    first = await describe(engine, small_faces)
    again = await describe(engine, small_faces)
    # Both answers are the first pass's (the medium block and the hand), nothing degraded...
    for described in (first, again):
        assert described.degradations == ()
        assert sorted(o.model for o in described.objects) == ["first", "palm"]
    # ... and not cached: the next request asks Triton again.
    assert metrics.lookups == [False, False]
    assert len(detector.first_inputs) == 2 and len(detector.tile_calls) == 2
    assert metrics.small_face_passes == ["unavailable"] * 2
    processed = await process(engine, small_faces, object_gravity_fill())
    assert processed.degradations == ()
    assert sorted(o.model for o in processed.objects) == ["first", "palm"]


async def test_a_refined_answer_is_cached(make_engine, small_faces):
    detector, metrics = TilingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    first = await describe(engine, small_faces)
    processed = await process(engine, small_faces, object_gravity_fill())
    assert metrics.lookups == [False, True]
    assert len(detector.first_inputs) == len(detector.tile_calls) == 1
    assert face_boxes(processed.objects) == face_boxes(first.objects)
    # Turning the pass off is another detector configuration: another cache key.
    off = make_engine(detector, detection_tiled_pass=False)
    assert off._detector_identity != engine._detector_identity


@pytest.fixture
def planned_sources(monkeypatch) -> list[planning.SourceInfo]:
    """The SourceInfo of every plan the engine makes from now on."""
    sources: list[planning.SourceInfo] = []
    original = planning.plan_request

    def recording(source, *args, **kwargs):
        sources.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(planning, "plan_request", recording)
    return sources


async def test_the_plan_holds_the_tiled_input_when_the_pass_may_run(
    make_engine, small_faces, planned_sources
):
    sources = planned_sources
    await process(make_engine(TilingDetector()), small_faces, object_gravity_fill())
    await process(
        make_engine(TilingDetector(), detection_tiled_pass=False),
        small_faces,
        object_gravity_fill(),
    )
    await process(make_engine(TilingDetector()), small_faces, object_gravity_fill(["hand"]))
    tiled = [source.tiled_detection_input for source in sources]
    assert tiled[1] is None and tiled[2] is None
    assert tiled[0] is not None
    assert (tiled[0].side, tiled[0].shrink, tiled[0].shared) == (2048, 2, False)
    assert (tiled[0].decoded.width, tiled[0].decoded.height) == (2200, 1500)


# --- Outputs too small to show what it finds --------------------------------------------------

THUMBNAIL = (300, 200)  # 0.068 of the scene: a 20 px face at the first input comes out 12 px


def blur_faces_thumbnail() -> list[pb.Operation]:
    fill = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=THUMBNAIL[0], height=THUMBNAIL[1])
    blur = pb.BlurDetections(sigma=8, classes=["face"])
    return [pb.Operation(resize=fill), pb.Operation(blur_detections=blur)]


async def test_a_thumbnail_placed_by_the_faces_skips_the_hints_and_the_tiles(make_engine, crowd):
    # The crowd's faces are too small for the first pass: in a 300x200 thumbnail they (and any
    # face only the tiled pass finds) would be under face_refine.MIN_OUTPUT_FACE_PX.
    detector, metrics = TilingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics, detection_cache_entries=0)
    processed = await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    assert detector.hint_calls == [] and detector.tile_calls == []
    assert (processed.width, processed.height) == THUMBNAIL
    assert processed.degradations == ()
    assert face_boxes(processed.objects) == []
    # A larger output of the same photo could show them: hints, then the tiled pass.
    processed = await process(engine, crowd, object_gravity_fill())
    assert len(detector.hint_calls) == 1 and len(detector.tile_calls) == 1
    assert len(face_boxes(processed.objects)) == len(SMALL)
    assert metrics.small_face_passes == ["skipped_small_output", "tiled"]


async def test_a_thumbnail_looks_for_small_faces_when_the_setting_says_so(make_engine, crowd):
    detector = TilingDetector()
    engine = make_engine(detector, detection_cache_entries=0, detection_min_output_face_px=0)
    processed = await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    assert len(detector.hint_calls) == 1 and len(detector.tile_calls) == 1
    assert len(face_boxes(processed.objects)) == len(SMALL)
    # Lowered to what a 300x200 thumbnail shows of a 20 px face at the first input (12 px).
    engine = make_engine(detector, detection_cache_entries=0, detection_min_output_face_px=11)
    await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    assert len(detector.hint_calls) == 2 and len(detector.tile_calls) == 2


async def test_a_thumbnail_that_blurs_the_faces_still_looks_for_every_face(make_engine, crowd):
    # Anonymisation needs every face whatever the output's size: only placement may skip.
    detector = TilingDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    await process(engine, crowd, blur_faces_thumbnail())
    assert len(detector.hint_calls) == 1 and len(detector.tile_calls) == 1


async def test_gravity_after_another_step_keeps_the_whole_rule(make_engine, crowd):
    # The scale a later step sees the faces at is not planned here: it gets every face.
    detector = TilingDetector()
    engine = make_engine(detector, detection_cache_entries=0)
    turn = pb.Operation(flip=pb.Flip(horizontal=True))
    await process(engine, crowd, [turn, *object_gravity_fill(size=THUMBNAIL)])
    assert len(detector.hint_calls) == 1 and len(detector.tile_calls) == 1


async def test_first_pass_answers_are_cached_apart_from_complete_ones(make_engine, crowd):
    detector, metrics = TilingDetector(), CacheMetrics()
    engine = make_engine(detector, metrics)
    await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    assert metrics.lookups == [False, True]
    assert len(detector.first_inputs) == 1 and detector.tile_calls == []
    # The first pass's answer does not serve a request that can show the small faces ...
    described = await describe(engine, crowd)
    assert metrics.lookups == [False, True, False]
    assert len(detector.tile_calls) == 1
    assert len(face_boxes(described.objects)) == len(SMALL)
    # ... and the complete answer serves both kinds.
    processed = await process(engine, crowd, object_gravity_fill(size=THUMBNAIL))
    assert metrics.lookups == [False, True, False, True]
    assert len(detector.first_inputs) == 2 and len(detector.tile_calls) == 1
    assert face_boxes(processed.objects) == face_boxes(described.objects)


async def test_a_thumbnail_plan_holds_no_tiled_input(make_engine, crowd, planned_sources):
    await process(make_engine(TilingDetector()), crowd, object_gravity_fill(size=THUMBNAIL))
    assert [source.tiled_detection_input for source in planned_sources] == [None]


# --- Deadlines ---------------------------------------------------------------------------------


class TimingOutTiles(TilingDetector):
    """A tiled pass that takes longer than it is given: it waits out ``timeout_s`` and fails
    as the client's Triton calls do then."""

    async def detect_tiles(self, rgb, *, first, first_size, timeout_s=None):
        self.tile_calls.append(
            TileCall(rgb.shape, list(first), first_size, timeout_s, time.monotonic())
        )
        await asyncio.sleep(timeout_s if timeout_s is not None else 60)
        raise InferenceUnavailable("TRITON_TIMEOUT", "deadline exceeded")


async def test_a_deadline_passing_in_the_tiled_pass_ends_the_request(make_engine, small_faces):
    detector = TimingOutTiles()
    engine = make_engine(detector)
    timeout = 3.0
    msg = request(small_faces, object_gravity_fill(), format=pb.IMAGE_FORMAT_JPEG)
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    deadline = time.monotonic() + timeout
    with pytest.raises(DeadlineExceeded):
        await engine.process(parsed, deadline)
    ended = time.monotonic()
    [call] = detector.tile_calls
    # Triton is given what is left of the deadline, never more...
    assert call.timeout_s is not None and 0 < call.timeout_s <= timeout
    assert call.at + call.timeout_s <= deadline + 0.01
    # ... and the request ends once it is spent (a loose bound: a busy machine must not fail it).
    assert ended - deadline < 3.0


class SlowFirstPass(TilingDetector):
    """A first pass that answers only after the request's deadline (and finds nothing)."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    async def detect(self, rgb, *, classes=None, timeout_s=None):
        self.first_inputs.append(rgb.shape)
        await asyncio.sleep(max(0.0, self.deadline - time.monotonic()) + 0.3)
        return []


async def test_a_deadline_passed_before_the_tiled_input_stops_it(make_engine, small_faces):
    # DescribeImage: nothing but detection checks the deadline. The first pass found no face,
    # so the rule asks for the tiled pass, but the deadline has passed: its input's decode is
    # killed (the deadline timer killed the request) and the request fails, Triton uncalled.
    deadline = time.monotonic() + 1.0
    detector = SlowFirstPass(deadline)
    engine = make_engine(detector)
    with pytest.raises(DeadlineExceeded):
        await engine.describe(small_faces, True, deadline)
    assert len(detector.first_inputs) == 1 and detector.tile_calls == []
    assert time.monotonic() - deadline < 3.0
