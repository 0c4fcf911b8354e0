"""The tiled pass's input in the plan (`SourceInfo.tiled_detection_input`): a request whose
detections may go through the tiled pass is planned with a second, larger detector input
decoded beside the pipeline, its tiles' tensors and the first input; more memory and more work
than the same request without it, and nothing when the request detects nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import jpeg
from imagesvc import planning, vips
from imagesvc.engine import (
    SHARED_DECODE_SIDES,
    Engine,
    open_header,
    plan_shrink_on_load,
    preview_shrink,
    source_info,
)
from imagesvc.errors import RequestTooCostly
from imagesvc.planning.plan import TILE_PREPARE_NS, TILE_TENSOR_BYTES, TILED_PASS_TILES
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference import face_refine

MB = 2**20


@pytest.fixture(scope="module")
def settings() -> Settings:
    settings = Settings(workers=1)
    vips.configure(settings)
    return settings


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return jpeg(np.full((3000, 4400, 3), 90, np.uint8))


class TilingStub:
    """A detector with the tiled pass, never called: the plan only needs to know it has one."""

    classes = frozenset({"face"})

    async def detect(self, rgb, *, classes=None, timeout_s=None):
        raise AssertionError("not called")

    async def detect_tiles(self, rgb, *, first, first_size, timeout_s=None):
        raise AssertionError("not called")


def plans(settings: Settings, data: bytes, ops, *, detect: bool = True):
    """The request's plan without and with the tiled input, the detector's input and the
    tiled one decided as `Engine._load` decides them."""
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=data), pipelines=[pb.Pipeline(operations=ops)]
    )
    request = parse_process_request(msg, settings, frozenset({"face"}))
    header = open_header(request.data, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    detection = None
    if detect:
        side = settings.detection_max_side
        factor = preview_shrink(header, side)
        width, height = -(-header.size[0] // factor), -(-header.size[1] // factor)
        shared = factor <= shrink and width * height <= SHARED_DECODE_SIDES * side * side
        shrink = factor if shared else shrink
        detection = (factor, shared)
    engine = Engine(settings, TilingStub(), NullMetrics())
    try:
        side, tiled_shrink = engine.tiled_input_plan(header, request.detection_classes)
    finally:
        engine.close()
    out = []
    for tiled in (None, tiled_shrink):
        source = source_info(header, shrink, len(data), settings, detection, tiled)
        out.append((source, planning.plan_request(source, request.pipelines, "jpeg", settings)))
    return side, out


def thumbnail() -> list[pb.Operation]:
    """A 300x200 fill by object gravity: a small result, so the detector inputs dominate."""
    gravity = pb.Gravity(object=pb.ObjectGravity())
    fill = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=300, height=200, gravity=gravity)
    return [pb.Operation(resize=fill)]


def draw_after_blur() -> list[pb.Operation]:
    """A full-size result: its encode dominates the memory."""
    return [pb.Operation(blur=pb.Blur(sigma=2)), pb.Operation(draw_detections=pb.DrawDetections())]


def test_a_tiled_input_costs_more_memory_and_work(settings, big_jpeg):
    side, [(_, without), (source, tiled)] = plans(settings, big_jpeg, thumbnail())
    assert side == 2048
    assert source.detection_input is not None and source.detection_input.shared
    tiled_input = source.tiled_detection_input
    assert tiled_input is not None
    assert (tiled_input.shrink, tiled_input.side, tiled_input.shared) == (2, 2048, False)
    assert (tiled_input.decoded.width, tiled_input.decoded.height) == (2200, 1500)
    # Memory: beside the pipeline, its 2048 px input (planned square: the decode's 3 bands and
    # the uint8 RGB, twice) and the tiles' float tensors; less than a full-size copy of the
    # source more.
    at_least = 2048 * 2048 * 6 * 2 + TILED_PASS_TILES * TILE_TENSOR_BYTES
    extra = tiled.peak_bytes - without.peak_bytes
    assert at_least <= extra < at_least + 4400 * 3000 * 3
    # Work: the decode at 1/2, its downscale, and the tiles' letterboxing.
    costs = planning.costs
    expected = 2200 * 1500 * (costs.DECODE_NS["jpeg"] + costs.THUMBNAIL_NS) * costs.NS
    expected += 2048 * 2048 * TILE_PREPARE_NS * costs.NS
    assert tiled.work_s - without.work_s == pytest.approx(expected)
    # The pipeline's steps and output are what they were.
    assert [s.shape for s in tiled.steps] == [s.shape for s in without.steps]
    assert tiled.output == without.output


def test_a_full_size_encode_still_dominates_the_memory(settings, big_jpeg):
    # The tiled input is made before the first step that needs detections; the encode of a
    # full-size result holds more, later. More work all the same.
    _, [(_, without), (_, tiled)] = plans(settings, big_jpeg, draw_after_blur())
    assert tiled.peak_bytes == without.peak_bytes
    assert tiled.work_s > without.work_s


def test_no_tiled_input_without_detections_to_make(settings, big_jpeg):
    # Detections known already (the cache): the tiled input is never made.
    _, [(_, without), (source, tiled)] = plans(settings, big_jpeg, thumbnail(), detect=False)
    assert source.tiled_detection_input is None
    assert tiled.peak_bytes == without.peak_bytes and tiled.work_s == without.work_s


def test_the_tiled_input_can_tip_a_request_over_the_memory_budget(settings, big_jpeg):
    # The smallest budget there is: the thumbnail fits in it, not with the tiled pass's input.
    tight = Settings(workers=1, max_request_memory_mb=64)
    _, [(_, without), (_, tiled)] = plans(tight, big_jpeg, thumbnail())
    planning.check_budget(without, tight)
    with pytest.raises(RequestTooCostly) as caught:
        planning.check_budget(tiled, tight)
    assert caught.value.metadata["limit"] == "max_request_memory_mb"


def test_the_plan_counts_every_tile_the_pass_can_make():
    # The tiles' tensors are planned for TILED_PASS_TILES tiles: plan_tiles never makes more.
    assert face_refine.MAX_TILES <= TILED_PASS_TILES
    for width, height in ((2048, 1536), (2048, 683), (2048, 2), (3, 2048)):
        assert len(face_refine.plan_tiles(width, height)) <= TILED_PASS_TILES
