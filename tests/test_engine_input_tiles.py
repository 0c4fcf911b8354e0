"""The input's own tiles in the engine (`face_refine.needs_input_tiles`), through the real
Triton: on a source too small for the tiled pass's larger copy, a face the first pass misses
(about 30 px at its 512 px input) is found by the full-range model on the input's 2x2 tiles,
so DescribeImage reports it and blur_detections hides it. With the tiled pass switched off
(IMAGESVC_DETECTION_TILED_PASS=false) the same face is missed and stays visible."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pyvips
import skimage.data

from imagesvc import vips
from imagesvc.engine import Engine
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference.client import FaceDetector
from tests.images import decode, jpeg, request, ssim, to_array

SOURCE = (640, 480)
# The astronaut drawn 200 px tall at (80, 120): her face ~38 px in the source, ~30 px at the
# 512 px first input, 11 px at the full-range model's 192 px: the first pass misses it.
PORTRAIT_SIDE, PORTRAIT_AT = 200, (80, 120)
# Where her face is in the source (measured on the drawing, with margin).
FACE = (135, 130, 70, 75)  # left, top, width, height


class PassMetrics(NullMetrics):
    def __init__(self) -> None:
        self.small_face_passes: list[str] = []

    def small_face_pass(self, outcome: str) -> None:
        self.small_face_passes.append(outcome)


@pytest.fixture(scope="module", autouse=True)
def configured():
    vips.configure(Settings())


@pytest.fixture(scope="module")
def photo() -> bytes:
    portrait = pyvips.Image.new_from_array(skimage.data.astronaut())
    portrait = portrait.resize(PORTRAIT_SIDE / 512, kernel="lanczos3").numpy()
    rng = np.random.default_rng(20261202)
    canvas = (128 + rng.integers(0, 8, (SOURCE[1], SOURCE[0], 3))).astype(np.uint8)
    left, top = PORTRAIT_AT
    canvas[top : top + portrait.shape[0], left : left + portrait.shape[1]] = portrait
    return jpeg(canvas, Q=92)


@pytest.fixture
async def make_engine(triton_sidecar):
    made: list[tuple[Engine, FaceDetector]] = []

    def make(**overrides) -> Engine:
        detector = FaceDetector(triton_sidecar.grpc_url, timeout_s=10.0, retry_after_s=0)
        settings = Settings(**{"workers": 2, "detection_cache_entries": 0, **overrides})
        engine = Engine(settings, detector, PassMetrics())
        made.append((engine, detector))
        return engine

    yield make
    for engine, detector in made:
        engine.close()
        await detector.close()


def _inside(box, region) -> bool:
    left, top, width, height = region
    return (
        box.left >= left
        and box.top >= top
        and box.left + box.width <= left + width
        and box.top + box.height <= top + height
    )


@pytest.mark.parametrize("tiled_pass", [True, False], ids=["input tiles", "tiled pass off"])
async def test_describe_finds_the_small_face_only_with_the_input_tiles(
    make_engine, photo, tiled_pass
):
    engine = make_engine(detection_tiled_pass=tiled_pass)
    described = await engine.describe(
        photo, True, time.monotonic() + 60, classes=frozenset({"face"})
    )
    assert described.degradations == ()
    faces = [o for o in described.objects if o.class_name == "face"]
    if tiled_pass:
        [face] = faces
        assert _inside(face.box, FACE) and face.box.height > 20
        assert engine.metrics.small_face_passes == ["tiled"]
    else:
        assert faces == []
        assert engine.metrics.small_face_passes == []


@pytest.mark.parametrize("tiled_pass", [True, False], ids=["input tiles", "tiled pass off"])
async def test_blur_detections_hides_the_face_the_input_tiles_find(make_engine, photo, tiled_pass):
    engine = make_engine(detection_tiled_pass=tiled_pass)
    blur = pb.Operation(blur_detections=pb.BlurDetections(sigma=8, classes=["face"]))
    msg = request(photo, [blur], format=pb.IMAGE_FORMAT_PNG)
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    result = await engine.process(parsed, time.monotonic() + 60)
    original, out = to_array(decode(photo)), to_array(decode(result.data))
    left, top, width, height = FACE
    inner = (slice(top + 15, top + height - 15), slice(left + 15, left + width - 15))
    face_similarity = ssim(original[inner], out[inner])
    if tiled_pass:
        assert face_similarity < 0.6  # blurred
    else:
        assert face_similarity > 0.95  # untouched: the face was never found
