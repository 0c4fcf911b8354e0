"""Where a crop goes when it should keep detected objects: the gravity modes (imgproxy Pro
``IMGPROXY_OBJECT_DETECTION_GRAVITY_MODE``), per-class weights (``objw``) and where the kept
objects land in the crop (``objects_position``). Pure arithmetic on boxes; no pixels.

Contracts, in the order they win:

1. Image edges: the window always lies inside the image.
2. ``max_score_area`` never keeps fewer whole objects than a centred crop would: the centred
   window is one of the candidates and a candidate keeping fewer is never chosen.
3. The kept objects stay whole when they fit, whatever ``position`` asks.
4. Among placements keeping the same objects, the one cutting through the least weighted area of
   the others wins (an object wholly outside is not cut).
5. Then the placement nearest to what ``position`` asks (centred by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imagesvc.geometry import Box
from imagesvc.options import (
    ClassWeights,
    CompassGravity,
    FocusPointGravity,
    ObjectsPosition,
    ProportionalPosition,
)

# Beyond this many objects (by score) the rest are ignored: the search is quadratic in them.
MAX_OBJECTS = 48
# A box edge this close to the window's counts as inside (boxes are float, windows integer).
EDGE_SLACK = 0.5


@dataclass(frozen=True, slots=True)
class WeightedObject:
    box: Box  # in the pixels of the image the crop is cut from
    confidence: float
    weight: float

    @property
    def value(self) -> float:
        """What keeping it whole is worth: weighted confidence times its area, so one large face
        outweighs a background one, and two like faces outweigh one."""
        return self.confidence * self.weight * self.box.width * self.box.height


def weighted(
    objects: Sequence[tuple[str, float, Box]],
    weights: ClassWeights,
    defaults: Mapping[str, float] | None = None,
) -> list[WeightedObject]:
    """(class, confidence, box) triples with their weights resolved (see ClassWeights)."""
    return [
        WeightedObject(box, confidence, weights.weight(name, defaults))
        for name, confidence, box in objects
    ]


def best_object(objects: Sequence[WeightedObject], mode: str, width: int, height: int):
    """The one object ONE_BEST (area x confidence x weight) or ONE_BEST_CENTERMOST (that, times
    1 - its centre's distance from the image centre / the half diagonal) keeps."""
    half_diagonal = math.hypot(width, height) / 2 or 1.0

    def rank(obj: WeightedObject) -> float:
        if mode != "one_best_centermost":
            return obj.value
        cx, cy = obj.box.left + obj.box.width / 2, obj.box.top + obj.box.height / 2
        distance = math.hypot(cx - width / 2, cy - height / 2)
        return obj.value * max(0.0, 1.0 - distance / half_diagonal)

    return max(objects, key=rank)


def union(boxes: Sequence[Box]) -> Box:
    left, top = min(b.left for b in boxes), min(b.top for b in boxes)
    right, bottom = max(b.right for b in boxes), max(b.bottom for b in boxes)
    return Box(left, top, right - left, bottom - top)


def preferred_start(
    lo: float, hi: float, crop: int, side: int, position: ObjectsPosition, axis: str
) -> float:
    """Where a window of ``crop`` px along one axis of an image of ``side`` px should start so
    that the objects' extent [lo, hi] lands where ``position`` says."""
    centre = (lo + hi) / 2
    if isinstance(position, ProportionalPosition):
        return centre - (centre / side) * crop if side else 0.0
    if isinstance(position, FocusPointGravity):
        return centre - (position.x if axis == "x" else position.y) * crop
    assert isinstance(position, CompassGravity)
    raw = position.x_offset if axis == "x" else position.y_offset
    offset = raw if raw >= 1 else raw * crop
    # "north_east": the vertical part first, as in the Compass names.
    vertical, _, horizontal = position.position.rpartition("_")
    if not vertical and horizontal in ("north", "south"):
        vertical, horizontal = horizontal, ""
    anchor = horizontal if axis == "x" else vertical
    if anchor in ("west", "north"):
        return lo - offset
    if anchor in ("east", "south"):
        return hi + offset - crop
    return centre + offset - crop / 2


def _candidates(boxes: Sequence[Box], crop: int, side: int, axis: str) -> list[float]:
    """Window starts along one axis where some box edge meets a window edge, plus both ends."""
    upper = max(side - crop, 0)
    starts = {0.0, float(upper), upper / 2}
    for box in boxes:
        lo, hi = (box.left, box.right) if axis == "x" else (box.top, box.bottom)
        starts.update((lo, hi - crop, hi, lo - crop))
    return sorted(min(max(s, 0.0), upper) for s in starts)


def _inside(lo: float, hi: float, start: float, crop: int) -> bool:
    return lo >= start - EDGE_SLACK and hi <= start + crop + EDGE_SLACK


def _overlap(lo: float, hi: float, start: float, crop: int) -> float:
    return max(0.0, min(hi, start + crop) - max(lo, start))


def _scores(
    objects: Sequence[WeightedObject],
    lefts: Sequence[float],
    tops: Sequence[float],
    cw: int,
    ch: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every window (lefts x tops): how many objects it keeps whole, their value, and the
    value-weighted share of the objects it cuts through. Arrays of shape (len(lefts), len(tops))."""
    lo_x = np.array([o.box.left for o in objects])[:, None]
    hi_x = np.array([o.box.right for o in objects])[:, None]
    lo_y = np.array([o.box.top for o in objects])[:, None]
    hi_y = np.array([o.box.bottom for o in objects])[:, None]
    value = np.array([o.value for o in objects])
    area = np.array([max(o.box.width * o.box.height, 1e-9) for o in objects])
    x0, y0 = np.asarray(lefts, float)[None, :], np.asarray(tops, float)[None, :]
    in_x = (lo_x >= x0 - EDGE_SLACK) & (hi_x <= x0 + cw + EDGE_SLACK)  # (objects, lefts)
    in_y = (lo_y >= y0 - EDGE_SLACK) & (hi_y <= y0 + ch + EDGE_SLACK)
    over_x = np.clip(np.minimum(hi_x, x0 + cw) - np.maximum(lo_x, x0), 0, None)
    over_y = np.clip(np.minimum(hi_y, y0 + ch) - np.maximum(lo_y, y0), 0, None)
    kept = in_x[:, :, None] & in_y[:, None, :]  # (objects, lefts, tops)
    visible = over_x[:, :, None] * over_y[:, None, :] / area[:, None, None]
    whole = kept.sum(axis=0)
    kept_value = np.tensordot(value, kept, axes=1)
    cut_value = np.tensordot(value, np.where(kept, 0.0, visible), axes=1)
    return whole, kept_value, cut_value


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def _round(value: float, upper: int) -> int:
    # Half-pixel leftovers go right/down, as gravity.centred_on does.
    return int(math.floor(_clamp(value, 0.0, max(upper, 0)) + 0.5))


def place(
    width: int,
    height: int,
    crop_w: int,
    crop_h: int,
    objects: Sequence[WeightedObject],
    mode: str,
    position: ObjectsPosition,
) -> tuple[int, int]:
    """Top-left corner of a crop_w x crop_h window inside width x height that keeps ``objects``
    as ``mode`` says (module docstring). ``objects`` must not be empty."""
    objects = sorted(objects, key=lambda o: o.value, reverse=True)[:MAX_OBJECTS]
    if mode == "max_score_area":
        kept = _max_score_set(width, height, crop_w, crop_h, objects)
    else:
        kept = [best_object(objects, mode, width, height)]
    if not kept:  # nothing fits whole: keep the best one as well as it can be
        kept = [best_object(objects, "one_best", width, height)]
    target = union([o.box for o in kept])
    return _settle(width, height, crop_w, crop_h, objects, target, position)


def _max_score_set(
    width: int, height: int, cw: int, ch: int, objects: Sequence[WeightedObject]
) -> list[WeightedObject]:
    """The objects wholly inside the best window: the most value kept, among windows keeping at
    least as many whole as the centred one; then the least cut."""
    boxes = [o.box for o in objects]
    lefts = [max(width - cw, 0) / 2, *_candidates(boxes, cw, width, "x")]
    tops = [max(height - ch, 0) / 2, *_candidates(boxes, ch, height, "y")]
    whole, kept, cut = _scores(objects, lefts, tops, cw, ch)
    # Index (0, 0) is the centred window: the floor on how many whole objects to keep.
    eligible = whole >= whole[0, 0]
    # Lexicographic: kept value (to a relative 1e-9), then the least cut.
    ranked = np.where(eligible, np.round(kept / max(kept.max(), 1e-12), 9), -1.0)
    best = ranked == ranked.max()
    cut_ranked = np.where(best, cut, np.inf)
    a, b = np.unravel_index(int(np.argmin(cut_ranked)), cut_ranked.shape)
    left, top = lefts[a], tops[b]
    return [
        o
        for o in objects
        if _inside(o.box.left, o.box.right, left, cw) and _inside(o.box.top, o.box.bottom, top, ch)
    ]


def _settle(
    width: int,
    height: int,
    cw: int,
    ch: int,
    objects: Sequence[WeightedObject],
    target: Box,
    position: ObjectsPosition,
) -> tuple[int, int]:
    """Place the window so ``target`` stays whole (when it fits), cutting the least through the
    other objects, and otherwise as near as ``position`` asks."""
    ranges = []
    for lo, hi, crop, side, axis in (
        (target.left, target.right, cw, width, "x"),
        (target.top, target.bottom, ch, height, "y"),
    ):
        upper = max(side - crop, 0)
        wish = _clamp(preferred_start(lo, hi, crop, side, position, axis), 0, upper)
        if hi - lo <= crop:  # fits: any start keeping [lo, hi] inside
            low, high = _clamp(hi - crop, 0, upper), _clamp(lo, 0, upper)
        else:  # too big: centre on it (the part nearest position would be arbitrary)
            low = high = _clamp((lo + hi) / 2 - crop / 2, 0, upper)
            wish = low
        ranges.append((low, high, _clamp(wish, low, high)))
    (lx, hx, wx), (ly, hy, wy) = ranges
    others = [o for o in objects if not _contains(target, o.box)]
    starts_x = [
        s
        for s in {wx, lx, hx, *_candidates(_boxes(others), cw, width, "x")}
        if lx - 1e-9 <= s <= hx + 1e-9
    ]
    starts_y = [
        s
        for s in {wy, ly, hy, *_candidates(_boxes(others), ch, height, "y")}
        if ly - 1e-9 <= s <= hy + 1e-9
    ]
    if not others:
        return _round(wx, width - cw), _round(wy, height - ch)
    _, _, cut = _scores(others, starts_x, starts_y, cw, ch)
    distance = np.abs(np.array(starts_x) - wx)[:, None] + np.abs(np.array(starts_y) - wy)[None, :]
    # The least cut (to 1e-6), then the nearest to what position asks.
    least = np.round(cut, 6) == np.round(cut, 6).min()
    a, b = np.unravel_index(int(np.argmin(np.where(least, distance, np.inf))), cut.shape)
    return _round(starts_x[a], width - cw), _round(starts_y[b], height - ch)


def _boxes(objects: Sequence[WeightedObject]) -> list[Box]:
    return [o.box for o in objects]


def _contains(outer: Box, inner: Box) -> bool:
    return (
        inner.left >= outer.left - EDGE_SLACK
        and inner.top >= outer.top - EDGE_SLACK
        and inner.right <= outer.right + EDGE_SLACK
        and inner.bottom <= outer.bottom + EDGE_SLACK
    )


def crop_box(
    width: int,
    height: int,
    objects: Sequence[WeightedObject],
    mode: str,
    padding: float,
) -> tuple[int, int, int, int]:
    """(left, top, width, height) of crop_objects: the box of all the objects (max_score_area)
    or of the best one, scaled by ``padding`` around its centre, in whole pixels, clipped to the
    image. ``objects`` must not be empty."""
    if mode == "max_score_area":
        box = union(_boxes(objects))
    else:
        box = best_object(objects, mode, width, height).box
    cx, cy = box.left + box.width / 2, box.top + box.height / 2
    half_w, half_h = box.width * padding / 2, box.height * padding / 2
    left = max(0, math.floor(cx - half_w))
    top = max(0, math.floor(cy - half_h))
    right = min(width, math.ceil(cx + half_w))
    bottom = min(height, math.ceil(cy + half_h))
    return left, top, max(1, right - left), max(1, bottom - top)
