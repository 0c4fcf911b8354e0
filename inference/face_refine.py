"""Refinements of the BlazeFace pipeline for small faces and false boxes (issue 8). Pure numpy.

Measured by ``bench/detection.py`` (figures and the command in bench/README.md, "Detection").
Wired: `inference.client.Detector` runs the per-model thresholds and the group-box suppression
in ``detect``, the tiles in ``detect_tiles`` and the face hints in ``face_hints``;
`imagesvc.engine` applies the rule (`needs_face_hints`, `needs_tiled_pass`) and makes the
tiled input (IMAGESVC_DETECTION_TILED_PASS). Boxes are ``(N, 4)``
``xmin, ymin, xmax, ymax`` float arrays in one image's pixels, scores ``(N,)``, as in
`inference.blazeface`.

1. **Per-model score thresholds** (`MODEL_SCORE_THRESHOLDS`, `score_threshold`): each model's
   raw boxes are decoded with its own threshold instead of one for both.
2. **A tiled pass** (`plan_tiles`, `needs_tiled_pass`, `drop_tile_edge_boxes`, `tile_to_image`):
   when the rule says the faces may be too small for the 192 px full-range input, the image
   is downscaled to a larger detector input (`TILED_INPUT_SIDE`), cut into overlapping
   square-ish tiles (`TILE_GRID`), and each tile goes through the full-range model on its own
   (the client stacks them into batched requests when the model allows).
   Boxes touching a tile's inner edge are dropped (the overlapping neighbour sees that face
   whole), the rest are mapped back and merged with the first pass in one weighted NMS, each
   tile's boxes as a list of their own: `inference.client.merge_detections` merges only
   across lists, and a face two overlapping tiles both see whole must come out once.
3. **A merge that does not fuse neighbours** (`suppress_group_boxes`): after weighted NMS, a
   box that wholly contains two or more better-scored kept boxes is the model's low-resolution
   view of a group of faces, not a face: it is dropped.
4. **Face hints** (`needs_face_hints`, `HINT_GRID`, `HINT_SCORE_THRESHOLD`, `MIN_FACE_HINTS`):
   when the first pass found no face at all on a source large enough to tile, the full-range
   model looks at `HINT_GRID` tiles of the first pass's own input (no new decode); its boxes
   there are hints, never detections, and the tiled pass runs only when there are at least
   `MIN_FACE_HINTS` of them. A crowd whose faces are too small for the first pass (the 1927
   Solvay photo: 14 px at 512, none found) gives 10; textures, landscapes and the other
   face-free photos of the labelled set give at most 2 (bench/README.md, "Detection"). Weak
   first-pass candidates were measured first and do not tell them apart: the crowd's best
   full-range score is 0.05, below many textures'.
5. **The input's own tiles** (`needs_input_tiles`, `INPUT_TILES_MIN_SIDE`): a source too
   small for the tiled pass (under `TILING_MIN_SOURCE_RATIO` times the first input: tiles of
   it would only upscale) still holds faces the first pass misses, as the full-range model
   sees the whole input at 192 px. When the first pass found no large face there, the tiles
   of the tiled pass are cut from the first input itself on `HINT_GRID` (the face hints'
   tiles, no new decode: each seen at ~0.66 instead of 0.375) and merged at
   `TILE_SCORE_THRESHOLD`, as the tiled pass's are. The 640 px basketball photo's 36 px face
   (28 px at 512) is found at 0.86 this way and by no other pass.
6. **Only faces an output can show** (`tiled_faces_visible`): the faces the tiled pass adds are
   under `FIRST_PASS_MIN_FACE_PX` at the first pass's input; when every step that uses the
   detections only places its output by them (gravity) and draws that output so small that
   such faces would come out under `MIN_OUTPUT_FACE_PX`, the service skips the hints and the
   tiled pass (a 256 px thumbnail of a camera photo: faces under ~13 px). Such a thumbnail
   of a camera-size source may get a coarser first input (IMAGESVC_DETECTION_MIN_SIDE); the
   rules' pixel figures are stated at the nominal input (`nominal_first_side`), and
   `rule_terms` scales a coarser input's face heights to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Triton model name -> minimum score of a raw box (see bench/README.md, Detection).
MODEL_SCORE_THRESHOLDS: Mapping[str, float] = {
    "blazeface_short_range": 0.6,
    "blazeface_full_range": 0.5,
}

# The tiled pass: long side of its detector input, tiles per side (columns, rows for a
# landscape image; swapped for portrait) and the overlap between neighbouring tiles as a
# share of a tile's side.
TILED_INPUT_SIDE = 2048
TILE_GRID = (4, 3)
TILE_OVERLAP = 0.25
# The most tiles plan_tiles makes to keep tiles roughly square (a 2048x2 strip would otherwise
# get thousands, each a 192x192x3 float32 tensor in a Triton request); the service's plan
# counts on this many (imagesvc.planning.plan.TILED_PASS_TILES).
MAX_TILES = 16
# Minimum score of a tile's full-range box.
TILE_SCORE_THRESHOLD = 0.6
# The rule: run the tiled pass when the source is at least this much larger than the first
# pass's detector input (else tiles would only upscale) and no face found in the first pass
# is at least LARGE_FACE_PX tall at the first pass's input.
TILING_MIN_SOURCE_RATIO = 1.5
LARGE_FACE_PX = 40.0
# Face hints: the full-range model on these tiles (columns, rows for a landscape image) of the
# first pass's input, at this score; the tiled pass needs at least MIN_FACE_HINTS of its boxes
# when the first pass found no face (measured: bench/README.md, "Detection").
HINT_GRID = (2, 2)
HINT_SCORE_THRESHOLD = 0.5
MIN_FACE_HINTS = 3
# The input's own tiles (`needs_input_tiles`): the first input must be at least this long, so
# that each of its HINT_GRID tiles is at least the full-range model's 192 px input (no
# upscaling).
INPUT_TILES_MIN_SIDE = 384
# The faces the tiled pass adds are under this height at the first pass's input: the first
# pass finds none of the labelled faces under 20 px there and 7 of 8 at 20-40 px
# (bench/README.md, "Detection").
FIRST_PASS_MIN_FACE_PX = 20.0
# A face shorter than this in an output is a few blobs, not a face anyone recognises: a step
# that only places its output by the faces (gravity) has no use for faces that come out
# smaller, so for it the tiled pass (and its hints) is skipped (`tiled_faces_visible`).
MIN_OUTPUT_FACE_PX = 16.0
# suppress_group_boxes: share of a kept box's area inside the candidate for it to count as
# contained, and how many contained boxes make the candidate a group box.
GROUP_CONTAINMENT = 0.8
GROUP_MIN_MEMBERS = 2


def score_threshold(
    model_name: str, default: float, thresholds: Mapping[str, float] = MODEL_SCORE_THRESHOLDS
) -> float:
    """The score threshold for ``model_name``'s raw boxes (``default`` for unknown models)."""
    return float(thresholds.get(model_name, default))


@dataclass(frozen=True, slots=True)
class Tile:
    """A window of the tiled pass's input image, in its pixels (``right``/``bottom``
    exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def _tile_size(length: int, count: int, overlap: float) -> int:
    """Size of each of ``count`` windows covering [0, length), ``overlap`` of it shared with
    the next."""
    if count <= 1 or length <= 1:
        return length
    # count * size - (count - 1) * overlap * size = length
    return min(math.ceil(length / (count - (count - 1) * overlap)), length)


def _spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` windows covering [0, length) evenly, each ``overlap`` of its size shared with
    the next."""
    if count <= 1 or length <= 1:
        return [(0, length)]
    size = _tile_size(length, count, overlap)
    step = (length - size) / (count - 1)
    spans = []
    for i in range(count):
        start = int(round(i * step))
        spans.append((start, min(length, start + size)))
    return spans


def _squarer(
    length: int, count: int, other: int, other_count: int, overlap: float, max_tiles: int
) -> tuple[int, int]:
    """Tile counts along a side of ``length`` whose tiles are too long for the other side's
    (``other``): more of them until they are at most 1.5 times the other side's tiles, and,
    once that would make more than ``max_tiles``, fewer along the other side first."""
    for across in range(other_count, 0, -1):
        along = count
        while (
            _tile_size(length, along, overlap) > 1.5 * _tile_size(other, across, overlap)
            and along < length
            and (along + 1) * across <= max_tiles
        ):
            along += 1
        square = _tile_size(length, along, overlap) <= 1.5 * _tile_size(other, across, overlap)
        if square or along >= length or across == 1:
            return along, across
    return count, other_count  # unreachable: ``across`` ends at 1


def plan_tiles(
    width: int,
    height: int,
    grid: tuple[int, int] = TILE_GRID,
    overlap: float = TILE_OVERLAP,
    max_tiles: int = MAX_TILES,
) -> list[Tile]:
    """Overlapping tiles covering a ``width`` x ``height`` image, row by row.

    ``grid`` is (along the long side, along the short side); a side whose tiles would come out
    more than 1.5 times longer than the other side's gets more tiles (so tiles stay roughly
    square, as the square model input wants), as long as there are at most ``max_tiles``
    (or the grid's own count, if more); past that the other side gets fewer tiles, down to
    one, and the tiles stay long (a panorama, a strip: each tile is one input tensor of a
    Triton request). ``overlap`` in [0, 0.5).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image {width}x{height}")
    if not 0 <= overlap < 0.5:
        raise ValueError(f"overlap {overlap} not in [0, 0.5)")
    long_count, short_count = max(1, grid[0]), max(1, grid[1])
    cols, rows = (long_count, short_count) if width >= height else (short_count, long_count)
    limit = max(max_tiles, cols * rows)
    tile_w, tile_h = _tile_size(width, cols, overlap), _tile_size(height, rows, overlap)
    if tile_w > 1.5 * tile_h:
        cols, rows = _squarer(width, cols, height, rows, overlap, limit)
    elif tile_h > 1.5 * tile_w:
        rows, cols = _squarer(height, rows, width, cols, overlap, limit)
    xs, ys = _spans(width, cols, overlap), _spans(height, rows, overlap)
    return [Tile(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]


def needs_tiled_pass(
    source_long_side: int,
    first_input_long_side: int,
    face_heights: Sequence[float],
    *,
    face_hints: int | None = None,
    min_source_ratio: float = TILING_MIN_SOURCE_RATIO,
    large_face_px: float = LARGE_FACE_PX,
    min_hints: int = MIN_FACE_HINTS,
) -> bool:
    """The measured rule: tile when the source has the pixels for it (at least
    ``min_source_ratio`` times the first pass's input), the first pass found no face at least
    ``large_face_px`` tall at its input, and either it found some (all small: the sign of a
    frame where faces are small) or it found none and there are at least ``min_hints`` face
    hints (``face_hints``, the count of `needs_face_hints`' boxes). ``face_hints`` None (no
    hints were looked for: a detector without them) tiles whenever no face is large, the rule
    before hints."""
    if source_long_side < min_source_ratio * first_input_long_side:
        return False
    if any(h >= large_face_px for h in face_heights):
        return False
    if face_heights or face_hints is None:
        return True
    return face_hints >= min_hints


def needs_input_tiles(
    source_long_side: int,
    first_input_long_side: int,
    face_heights: Sequence[float],
    *,
    min_source_ratio: float = TILING_MIN_SOURCE_RATIO,
    large_face_px: float = LARGE_FACE_PX,
    min_side: int = INPUT_TILES_MIN_SIDE,
) -> bool:
    """Whether the first input's own `HINT_GRID` tiles stand in for the tiled pass (module
    docstring, 5): the source is too small for the tiled pass (under ``min_source_ratio``
    times the first input), the first input is at least ``min_side`` long, and the first pass
    found no face at least ``large_face_px`` tall (none, or only small ones)."""
    if source_long_side >= min_source_ratio * first_input_long_side:
        return False
    if first_input_long_side < min_side:
        return False
    return not any(h >= large_face_px for h in face_heights)


def needs_face_hints(
    source_long_side: int,
    first_input_long_side: int,
    face_heights: Sequence[float],
    *,
    min_source_ratio: float = TILING_MIN_SOURCE_RATIO,
) -> bool:
    """Whether `needs_tiled_pass` turns on the face hints: the source is large enough to tile
    and the first pass found no face (a large face says no, a small one yes, without them)."""
    return not face_heights and source_long_side >= min_source_ratio * first_input_long_side


def tiled_faces_visible(
    source_long_side: int,
    first_input_long_side: int,
    output_scale: float,
    *,
    first_pass_min_face_px: float | None = None,
    min_output_face_px: float = MIN_OUTPUT_FACE_PX,
) -> bool:
    """Whether the faces only the tiled pass finds (under ``first_pass_min_face_px`` at the
    first pass's input) can come out at least ``min_output_face_px`` tall in an output drawn at
    ``output_scale`` output pixels per source pixel. False: an output that only places itself
    by the faces (gravity) gets the same answer from the first pass alone, for less.

    ``first_pass_min_face_px`` None: FIRST_PASS_MIN_FACE_PX for a source large enough for the
    tiled pass, LARGE_FACE_PX for one that gets the input's own tiles instead
    (`needs_input_tiles`): the first pass misses some faces up to that size too (the 640 px
    basketball photo's, 28 px at 512), and those tiles cost no decode, so they are skipped only
    where even such a face would not show."""
    if source_long_side <= 0 or first_input_long_side <= 0:
        return True
    if first_pass_min_face_px is None:
        small = source_long_side < TILING_MIN_SOURCE_RATIO * first_input_long_side
        first_pass_min_face_px = LARGE_FACE_PX if small else FIRST_PASS_MIN_FACE_PX
    input_scale = first_input_long_side / source_long_side
    return first_pass_min_face_px * output_scale / input_scale >= min_output_face_px


def nominal_first_side(source_long_side: int, max_side: int) -> int:
    """The first pass's input long side the rules' pixel figures are stated at: ``max_side``
    (IMAGESVC_DETECTION_MAX_SIDE), never more than the source's. The input itself may be
    shorter (a camera-size source decoded at the decoder's coarser shrink,
    IMAGESVC_DETECTION_MIN_SIDE)."""
    return min(int(max_side), int(source_long_side))


def rule_terms(
    source_long_side: int, input_long_side: int, max_side: int, face_heights: Sequence[float]
) -> tuple[tuple[int, int], list[float]]:
    """The rules' arguments for a first input ``input_long_side`` long: the sides (source,
    nominal first input) and the face heights scaled to the nominal input, so that a rule
    means the same share of the frame whatever shrink the input was decoded at (a face 40 px
    tall at 512 is 24 px at a 306 px input: both large)."""
    nominal = nominal_first_side(source_long_side, max_side)
    scale = nominal / input_long_side if input_long_side > 0 else 1.0
    return (int(source_long_side), nominal), [h * scale for h in face_heights]


def tiled_input_side(source_long_side: int, side: int = TILED_INPUT_SIDE) -> int:
    """Long side of the tiled pass's input: ``side``, never more than the source's."""
    return min(int(side), int(source_long_side))


def drop_tile_edge_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    tile: Tile,
    image_width: int,
    image_height: int,
    margin: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes (in the tile's pixels) that touch an edge of the tile that is not an edge of
    the image: the face runs on into the neighbouring tile, which overlaps this one and holds
    it whole (when it is smaller than the overlap)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = np.ones(len(boxes), dtype=bool)
    if tile.left > 0:
        keep &= boxes[:, 0] > margin
    if tile.top > 0:
        keep &= boxes[:, 1] > margin
    if tile.right < image_width:
        keep &= boxes[:, 2] < tile.width - margin
    if tile.bottom < image_height:
        keep &= boxes[:, 3] < tile.height - margin
    return boxes[keep], scores[keep]


def tile_to_image(boxes: np.ndarray, tile: Tile, scale_x: float, scale_y: float) -> np.ndarray:
    """Boxes in a tile's pixels -> the pixels of the image the first pass saw, where the
    tiled input is ``scale_x``/``scale_y`` times larger (``tiled_w / first_w``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 0::2] = (boxes[:, 0::2] + tile.left) / scale_x
    boxes[:, 1::2] = (boxes[:, 1::2] + tile.top) / scale_y
    return boxes


def _containment(inner: np.ndarray, outer: np.ndarray) -> float:
    """Share of ``inner``'s area inside ``outer``."""
    w = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    h = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return w * h / area if area > 0 else 0.0


def group_box_survivors(
    boxes: np.ndarray,
    scores: np.ndarray,
    containment: float = GROUP_CONTAINMENT,
    min_members: int = GROUP_MIN_MEMBERS,
) -> list[int]:
    """Indices of the boxes `suppress_group_boxes` keeps, in descending score order."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        members = sum(1 for k in kept if _containment(boxes[k], boxes[i]) >= containment)
        if members < min_members:
            kept.append(int(i))
    return kept


def suppress_group_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    containment: float = GROUP_CONTAINMENT,
    min_members: int = GROUP_MIN_MEMBERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop every box that contains (``containment`` of their area) at least ``min_members``
    kept boxes with a higher score: at low resolution a model sees two adjacent faces as one
    larger, weaker face. Input in any order; output in descending score order."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    kept = group_box_survivors(boxes, scores, containment, min_members)
    return boxes[kept], scores[kept]
