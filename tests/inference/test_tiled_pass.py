"""`Detector.detect_tiles`, the tiled pass for small faces, and `Detector.face_hints`, what
turns it on when the first pass finds no face: argument checks (unit), and over the real local
Triton a crowd of small faces that the first pass misses, its hints ask for the tiles and the
tiles find, each once, where it is, while a face-free texture gives too few hints. The
engine's side (the rule, the inputs, failures): tests/test_engine_tiled_pass.py; the tiling
maths and the rule: test_face_refine.py."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import pyvips
import skimage.data

from tests.server.scenes import FACE_BOX
from imagesvc.engine import detector_input
from inference import face_refine
from inference.client import TILE_MODEL, FaceDetector, shipped_models
from inference.detection import Detection
from inference.errors import InferenceUnavailable

FACE = frozenset({"face"})
# The astronaut's head, rows and columns of skimage.data.astronaut() (512x512); FACE_BOX (its
# face as BlazeFace boxes it, brows to chin) lies inside.
HEAD = (20, 260, 110, 350)
# Face height in the crowd's source pixels: 15 px at the 512 px first input (too small for the
# 192 px full-range model there), 61 px in the 2048 px tiled copy.
FACE_PX = 90
CROWD = (3000, 2000)
# Top-left corners of the pasted heads: inside a tile, inside the overlap of two or four tiles,
# and across a tile's edge (see tile_edges_in_source).
HEADS = (
    (150, 150),
    (1100, 150),
    (2500, 200),
    (820, 700),
    (1500, 650),
    (2150, 1000),
    (300, 1250),
    (1250, 1300),
    (2600, 1650),
    (1950, 1600),
    (700, 1650),
    (2700, 700),
)


def crowd(portrait: bool = False) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """CROWD grey, with the astronaut's head scaled so that its face is FACE_PX tall pasted at
    each of HEADS; and where each face is (xmin, ymin, xmax, ymax, from FACE_BOX). Portrait:
    the canvas and the positions transposed, the heads upright."""
    width, height = CROWD[::-1] if portrait else CROWD
    canvas = np.full((height, width, 3), 118, np.uint8)
    r0, r1, c0, c1 = HEAD
    scale = FACE_PX / FACE_BOX[3]
    head = np.ascontiguousarray(skimage.data.astronaut()[r0:r1, c0:c1])
    small = pyvips.Image.new_from_array(head).resize(scale, kernel="lanczos3").numpy()
    h, w = small.shape[:2]
    left, top, fw, fh = FACE_BOX
    faces = []
    for x, y in HEADS:
        x, y = (y, x) if portrait else (x, y)
        canvas[y : y + h, x : x + w] = small
        x0, y0 = x + (left - c0) * scale, y + (top - r0) * scale
        faces.append((x0, y0, x0 + fw * scale, y0 + fh * scale))
    return canvas, faces


def inputs(canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first pass's 512 px input and the tiled pass's 2048 px one, as the engine makes
    them (`imagesvc.engine.detector_input`)."""
    image = pyvips.Image.new_from_array(canvas).copy(interpretation="srgb")
    return detector_input(image, 1, 512), detector_input(image, 1, 2048)


def in_source(detections, first: np.ndarray, canvas: np.ndarray):
    sx, sy = canvas.shape[1] / first.shape[1], canvas.shape[0] / first.shape[0]
    return [(d.left * sx, d.top * sy, d.right * sx, d.bottom * sy) for d in detections]


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matches(boxes, faces, threshold: float = 0.5) -> tuple[dict[int, int], list[int]]:
    """face index -> the box matching it (IoU >= threshold, greedy in box order), and the
    boxes that match no face (a false box, or a face's second box)."""
    hits: dict[int, int] = {}
    unmatched = []
    for b, box in enumerate(boxes):
        scores = [(iou(box, face), f) for f, face in enumerate(faces) if f not in hits]
        best = max(scores, default=(0.0, -1))
        if best[0] >= threshold:
            hits[best[1]] = b
        else:
            unmatched.append(b)
    return hits, unmatched


def tile_edges_in_source(canvas: np.ndarray, big: np.ndarray) -> tuple[set, set]:
    """The inner tile edges of the tiled pass, in the crowd's pixels (x edges, y edges)."""
    height, width = big.shape[:2]
    sx, sy = canvas.shape[1] / width, canvas.shape[0] / height
    tiles = face_refine.plan_tiles(width, height)
    xs = {t.left * sx for t in tiles if t.left > 0} | {
        t.right * sx for t in tiles if t.right < width
    }
    ys = {t.top * sy for t in tiles if t.top > 0} | {
        t.bottom * sy for t in tiles if t.bottom < height
    }
    return xs, ys


# -- unit: no Triton ---------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("rgb", "first_size"),
    [
        (np.zeros((64, 64), np.uint8), (32, 32)),
        (np.zeros((64, 64, 3), np.float32), (32, 32)),
        (np.zeros((64, 64, 4), np.uint8), (32, 32)),
        (np.zeros((0, 64, 3), np.uint8), (32, 32)),
        (np.zeros((64, 64, 3), np.uint8), (0, 32)),
        (np.zeros((64, 64, 3), np.uint8), (32, -1)),
    ],
    ids=["grey", "float", "rgba", "empty", "no-first-width", "negative-first-height"],
)
async def test_bad_input_is_a_value_error(rgb, first_size):
    detector = FaceDetector("127.0.0.1:1")
    try:
        with pytest.raises(ValueError):
            await detector.detect_tiles(rgb, first=[], first_size=first_size)
    finally:
        await detector.close()


@pytest.mark.parametrize(
    "rgb",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
    ],
    ids=["grey", "float", "rgba", "empty"],
)
async def test_bad_input_to_face_hints_is_a_value_error(rgb):
    detector = FaceDetector("127.0.0.1:1")
    try:
        with pytest.raises(ValueError):
            await detector.face_hints(rgb)
    finally:
        await detector.close()


async def test_a_detector_without_the_full_range_model_cannot_tile():
    detector = FaceDetector("127.0.0.1:1", models=shipped_models(enabled=["blazeface_short_range"]))
    try:
        assert not detector.can_tile
        with pytest.raises(ValueError, match=TILE_MODEL):
            await detector.detect_tiles(
                np.zeros((64, 64, 3), np.uint8), first=[], first_size=(32, 32)
            )
        with pytest.raises(ValueError, match=TILE_MODEL):
            await detector.face_hints(np.zeros((64, 64, 3), np.uint8))
    finally:
        await detector.close()
    assert FaceDetector("127.0.0.1:1").can_tile


async def test_face_hints_run_the_full_range_model_at_the_measured_threshold():
    detector = FaceDetector("127.0.0.1:1")
    moved = FaceDetector("127.0.0.1:1", score_threshold=0.6)
    try:
        assert detector._hint_model.name == TILE_MODEL
        assert detector._hint_model.score_threshold == face_refine.HINT_SCORE_THRESHOLD
        assert detector._tile_model.score_threshold == face_refine.TILE_SCORE_THRESHOLD
        # The service's threshold moves both with it, as it moves the full-range model's.
        assert moved._hint_model.score_threshold == pytest.approx(0.6)
        assert moved._tile_model.score_threshold == pytest.approx(0.7)
    finally:
        await detector.close()
        await moved.close()


async def test_unreachable_triton_is_unavailable_and_opens_the_breaker():
    detector = FaceDetector(f"127.0.0.1:{_closed_port()}", timeout_s=0.5, retry_after_s=60)
    image = np.zeros((600, 800, 3), np.uint8)
    try:
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect_tiles(image, first=[], first_size=(400, 300))
        assert caught.value.reason == "TRITON_UNAVAILABLE"
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect_tiles(image, first=[], first_size=(400, 300))
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
        # The hints go through the same breaker.
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.face_hints(image)
        assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
    finally:
        await detector.close()


# -- over the real Triton -----------------------------------------------------------------


@pytest.fixture
async def detector(triton_sidecar):
    instance = FaceDetector(triton_sidecar.grpc_url, timeout_s=10.0)
    yield instance
    await instance.close()


@pytest.mark.triton
@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
async def test_the_tiles_find_the_small_faces_the_first_pass_misses(detector, portrait):
    canvas, faces = crowd(portrait)
    first_input, big = inputs(canvas)
    assert max(big.shape[:2]) == face_refine.TILED_INPUT_SIDE
    # Some faces straddle an inner tile edge: only the neighbouring tile sees them whole.
    xs, ys = tile_edges_in_source(canvas, big)
    assert any(f[0] < x < f[2] for f in faces for x in xs)
    assert any(f[1] < y < f[3] for f in faces for y in ys)

    first = await detector.detect(first_input, classes=FACE)
    first_hits, _ = matches(in_source(first, first_input, canvas), faces)
    # The hints, on the first pass's own input, see the crowd: many boxes, in its pixels...
    hints = await detector.face_hints(first_input)
    assert len(hints) >= face_refine.MIN_FACE_HINTS
    assert all(d.class_name == "face" and d.model == TILE_MODEL for d in hints)
    assert all(d.confidence >= face_refine.HINT_SCORE_THRESHOLD for d in hints)
    assert all(
        0 <= d.left and d.right <= first_input.shape[1] and d.bottom <= first_input.shape[0]
        for d in hints
    )
    hint_hits, _ = matches(in_source(hints, first_input, canvas), faces, threshold=0.3)
    assert len(hint_hits) >= face_refine.MIN_FACE_HINTS
    # ... and the service's rule runs the tiled pass here, whether the first pass found a few
    # faces (all small) or none.
    heights = [d.height for d in first]
    sides = max(canvas.shape[:2]), max(first_input.shape[:2])
    assert face_refine.needs_tiled_pass(*sides, heights, face_hints=len(hints))
    size = (first_input.shape[1], first_input.shape[0])
    both = await detector.detect_tiles(big, first=first, first_size=size)

    assert [d.confidence for d in both] == sorted((d.confidence for d in both), reverse=True)
    assert all(d.class_name == "face" for d in both)
    assert all(
        0 <= d.left and d.right <= size[0] and 0 <= d.top and d.bottom <= size[1] for d in both
    )
    hits, unmatched = matches(in_source(both, first_input, canvas), faces)
    assert len(first_hits) <= 2  # 15 px faces: the first pass sees few, if any
    # All but at most one of the 12 faces (room for model drift), in place (IoU >= 0.5)...
    assert len(hits) >= len(faces) - 1 > len(first_hits)
    # ... each once: no face comes out twice from two overlapping tiles, and nothing else.
    assert unmatched == [], [in_source([both[i]], first_input, canvas) for i in unmatched]
    assert all(d.model == TILE_MODEL for i, d in enumerate(both) if i in hits.values())


@pytest.mark.triton
@pytest.mark.parametrize("texture", ["brick", "grass", "grey"])
async def test_a_face_free_photo_gives_too_few_hints_to_tile(detector, texture):
    # A large face-free picture (3000x2000 here): the first pass finds no face, the hints
    # too few, so the service skips the 2048 px copy and its 12 tiles.
    if texture == "grey":
        canvas = np.full((2000, 3000, 3), 118, np.uint8)
    else:
        tile = getattr(skimage.data, texture)()
        canvas = np.tile(np.stack([tile] * 3, axis=-1), (4, 6, 1))[:2000, :3000]
    first_input, _ = inputs(np.ascontiguousarray(canvas))
    first = await detector.detect(first_input, classes=FACE)
    assert first == []
    hints = await detector.face_hints(first_input)
    assert len(hints) < face_refine.MIN_FACE_HINTS
    sides = max(canvas.shape[:2]), max(first_input.shape[:2])
    assert face_refine.needs_face_hints(*sides, [])
    assert not face_refine.needs_tiled_pass(*sides, [], face_hints=len(hints))


@pytest.mark.triton
async def test_the_first_pass_is_merged_in_and_other_classes_come_back_unchanged(detector):
    canvas, faces = crowd()
    first_input, big = inputs(canvas)
    size = (first_input.shape[1], first_input.shape[0])
    to_first = first_input.shape[1] / canvas.shape[1]
    x0, y0, x1, y1 = (v * to_first for v in faces[0])
    first = [
        # A face the tiles find too: merged with theirs, comes out once with its score.
        Detection("face", 0.99, x0, y0, x1 - x0, y1 - y0, "blazeface_short_range"),
        # A face on the grey, which the tiles do not see: kept as it is.
        Detection("face", 0.95, 300.0, 280.0, 12.0, 12.0, "blazeface_full_range"),
        Detection("person", 0.9, 10.0, 20.0, 100.0, 200.0, "pose_detection"),
        Detection("hand", 0.55, 5.0, 6.0, 7.0, 8.0, "palm_detection_full"),
    ]
    both = await detector.detect_tiles(big, first=first, first_size=size)
    assert first[2] in both and first[3] in both  # the very same detections
    assert sum(d.class_name != "face" for d in both) == 2
    assert both[0].confidence == 0.99 and both[0].model == "blazeface_short_range"
    [grey] = [d for d in both if d.confidence == 0.95]
    assert (grey.left, grey.top, grey.width, grey.height) == pytest.approx((300, 280, 12, 12))
    face_boxes = in_source([d for d in both if d.class_name == "face"], first_input, canvas)
    hits, unmatched = matches(face_boxes, [*faces, in_source([grey], first_input, canvas)[0]])
    assert hits[0] == 0  # face 0 is the first pass's box, merged with the tiles' (one box)
    assert unmatched == []
    assert len(hits) >= len(faces)  # the grey one and all but at most one pasted face


@pytest.mark.triton
async def test_a_deadline_shorter_than_the_tiles_is_a_timeout(triton_sidecar):
    detector = FaceDetector(triton_sidecar.grpc_url, timeout_s=10.0, retry_after_s=0)
    canvas, _ = crowd()
    _, big = inputs(canvas)
    try:
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect_tiles(big, first=[], first_size=(512, 341), timeout_s=1e-4)
        assert caught.value.reason == "TRITON_TIMEOUT"
        with pytest.raises(InferenceUnavailable) as caught:
            await detector.detect_tiles(big, first=[], first_size=(512, 341), timeout_s=0)
        assert caught.value.reason == "TRITON_TIMEOUT"
    finally:
        await detector.close()
