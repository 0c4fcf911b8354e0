"""Autoquality: the search for the quality that meets a target (README "Output encoding").

Pure logic over two callables, so that any encoder and any measure plug in:
``encode(quality) -> bytes`` and ``measure(data) -> float`` (the DSSIM of the decoded bytes, a
region-weighted DSSIM, ...; for ``kind="size"`` the measure is ``len``).

The model: the measure is a monotone, smooth function of the quality (DSSIM falls, bytes
grow). The search interpolates that curve instead of bisecting:

1. The first quality is ``first_guess``, else where ``prior`` (a ``QualityCurve``: the previous
   images of this size and format from ``GuessHistory``, or an ML predictor's curve) reaches
   the target, else the middle of ``[low, high]``.
2. With one trial, the prior's shape is shifted through it (log space) and solved for the
   target; without a prior, a default slope per kind is used.
3. With two or more, the trials that bracket the target are interpolated linearly (regula
   falsi on the curve) in ``(q, DSSIM)`` for DSSIM, which is close to linear in the quality
   around usual targets, and in ``(q, log bytes)`` for sizes; unbracketed, the secant of the
   two nearest trials extrapolates (the prior, else a default slope, when the secant has the
   wrong sign or size: encoders are not exactly monotone).
4. It stops when a trial is within ``allowed_error`` of the target, when two adjacent
   qualities bracket it (the optimum among integers), at an end of ``[low, high]`` past which
   the target lies (the closest end is returned, ``limited`` says which, not an error), or at
   ``max_encodes``.

What "meeting the target" means:

* ``dssim``: DSSIM <= target + allowed_error. The best quality is the lowest one that meets it
  (fewest bytes); a trial is *within* when |DSSIM - target| <= allowed_error.
* ``size``: bytes <= target (a hard limit). The best quality is the highest one that fits; a
  trial is *within* when target x (1 - allowed_error) <= bytes <= target: for sizes
  ``allowed_error`` is a fraction of the target.

``final`` (optional, for slow encoders such as AVIF): the search runs on ``encode`` (a low
effort) and the chosen quality is encoded once more with ``final`` (the requested effort) and
measured again; for sizes the final bytes are kept only if they still fit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["dssim", "size"]
KINDS = ("dssim", "size")

# d log(value) / d quality when nothing better is known, from the photo corpus at 720 px
# (bench/autoquality.py): DSSIM falls ~2-3 % a quality step, bytes grow ~2-3 % a step, for
# JPEG, WebP and AVIF between q30 and q85 (steeper above). For DSSIM the search works on the
# value itself, with this slope relative to the value where it extrapolates.
DEFAULT_LOG_SLOPE = {"dssim": -0.025, "size": 0.025}
# Slopes outside these magnitudes are noise (a flat or a jumping stretch of the curve).
MIN_LOG_SLOPE = 0.002
MAX_LOG_SLOPE = 0.5
MAX_ENCODES = 6


@dataclass(frozen=True, slots=True)
class QualityCurve:
    """A model of the measure against the quality: points ``(quality, value > 0)`` joined
    linearly in ``(quality, log value)``, extended past the ends by the end segments' slopes
    (``slope``, in log value per quality step, for a one-point curve).

    ``GuessHistory`` builds one from the previous images; an ML predictor can give one per
    image (predicted DSSIM at a few qualities)."""

    points: tuple[tuple[float, float], ...]
    slope: float | None = None

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a QualityCurve needs at least one point")
        qualities = [q for q, _ in self.points]
        if qualities != sorted(qualities) or len(set(qualities)) != len(qualities):
            raise ValueError("QualityCurve points must be sorted by distinct qualities")
        if any(not (v > 0 and math.isfinite(v)) for _, v in self.points):
            raise ValueError("QualityCurve values must be finite and > 0")
        if len(self.points) == 1 and self.slope is None:
            raise ValueError("a one-point QualityCurve needs a slope")

    @classmethod
    def from_points(
        cls, points: Iterable[tuple[float, float]], slope: float | None = None
    ) -> QualityCurve:
        """Sorted, one point per quality (the last given wins), non-positive values dropped."""
        by_quality = {float(q): float(v) for q, v in points if v > 0 and math.isfinite(v)}
        return cls(tuple(sorted(by_quality.items())), slope)

    def _segment(self, q: float) -> tuple[float, float, float]:
        """(q0, log v0, slope) of the segment that covers q (or extends to it)."""
        pts = self.points
        if len(pts) == 1:
            return pts[0][0], math.log(pts[0][1]), float(self.slope)
        index = 0
        while index < len(pts) - 2 and q > pts[index + 1][0]:
            index += 1
        (q0, v0), (q1, v1) = pts[index], pts[index + 1]
        return q0, math.log(v0), (math.log(v1) - math.log(v0)) / (q1 - q0)

    def log_value_at(self, q: float) -> float:
        q0, y0, slope = self._segment(q)
        return y0 + slope * (q - q0)

    def value_at(self, q: float) -> float:
        return math.exp(self.log_value_at(q))

    def slope_at(self, q: float) -> float:
        return self._segment(q)[2]

    def quality_for(self, value: float) -> float | None:
        """The quality at which the curve reaches ``value`` (the first crossing from low
        qualities), extrapolating past the ends; None when the curve never gets there."""
        if not value > 0:
            return None
        y = math.log(value)
        pts = self.points
        if len(pts) == 1:
            if not self.slope:
                return None
            return pts[0][0] + (y - math.log(pts[0][1])) / self.slope
        logs = [(q, math.log(v)) for q, v in pts]
        for (q0, y0), (q1, y1) in zip(logs, logs[1:], strict=False):
            if min(y0, y1) <= y <= max(y0, y1) and y0 != y1:
                return q0 + (y - y0) * (q1 - q0) / (y1 - y0)
        # Outside the points' range: extend the nearer end's segment.
        (qa, ya), (qb, yb) = logs[0], logs[1]
        (qc, yc), (qd, yd) = logs[-2], logs[-1]
        for (q0, y0), (q1, y1), anchor in (((qa, ya), (qb, yb), 0), ((qc, yc), (qd, yd), 1)):
            slope = (y1 - y0) / (q1 - q0)
            if slope == 0:
                continue
            q = (q0 if anchor == 0 else q1) + (y - (y0 if anchor == 0 else y1)) / slope
            if (anchor == 0 and q <= q0) or (anchor == 1 and q >= q1):
                return q
        return None

    def shifted_through(self, q: float, value: float) -> QualityCurve:
        """The same shape moved (in log space) to pass through ``(q, value)``."""
        factor = value / self.value_at(q)
        return QualityCurve(tuple((pq, pv * factor) for pq, pv in self.points), self.slope)


@dataclass(slots=True)
class SearchResult:
    quality: int
    data: bytes
    encodes: int  # calls of encode (and final)
    achieved: float  # the measure of ``data`` (DSSIM, or bytes for size)
    target_met: bool  # dssim: achieved <= target + allowed_error; size: achieved <= target
    trials: list[tuple[int, int, float]] = field(default_factory=list)  # (q, bytes, measure)
    within: bool = False  # |achieved - target| within allowed_error (module docstring)
    # "low" / "high": the target lies past that end of [low, high], which was returned.
    limited: str | None = None
    final: bool = False  # data comes from ``final``


def _check(kind: str, target: float, low: int, high: int, allowed_error: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (target > 0 and math.isfinite(target)):
        raise ValueError("target must be a finite number > 0")
    if not 1 <= low <= high <= 100:
        raise ValueError(f"need 1 <= low <= high <= 100, got [{low}, {high}]")
    if not allowed_error >= 0:
        raise ValueError("allowed_error must be >= 0")


def search_quality(
    encode: Callable[[int], bytes],
    measure: Callable[[bytes], float],
    *,
    target: float,
    low: int,
    high: int,
    allowed_error: float,
    kind: Kind = "dssim",
    first_guess: int | None = None,
    prior: QualityCurve | None = None,
    max_encodes: int = MAX_ENCODES,
    final: Callable[[int], bytes] | None = None,
) -> SearchResult:
    """Find the quality in ``[low, high]`` that meets ``target`` (module docstring).

    ``measure`` is ignored for ``kind="size"`` (the measure is the byte count) and may be
    None there. The result carries every trial; ``GuessHistory.record`` learns from them."""
    _check(kind, target, low, high, allowed_error)
    if max_encodes < 1:
        raise ValueError("max_encodes must be >= 1")
    dssim = kind == "dssim"
    if dssim:
        ceiling = target + allowed_error

        def meets(v: float) -> bool:
            return v <= ceiling

        def within(v: float) -> bool:
            return abs(v - target) <= allowed_error

        aim = target
    else:
        floor = target * (1.0 - min(allowed_error, 1.0))

        def meets(v: float) -> bool:
            return v <= target

        def within(v: float) -> bool:
            return floor <= v <= target

        # Aim inside the band (sizes are a hard limit: just under the target, never over).
        aim = target * (1.0 - min(allowed_error, 1.0) / 2.0)
    # The space the trials are interpolated in: DSSIM is close to linear in the quality
    # around usual targets (JPEG, WebP, AVIF at 720 px; log DSSIM bends), bytes close to
    # exponential, so DSSIM itself and log bytes.
    if dssim:

        def space(v: float) -> float:
            return v

    else:
        space = math.log
    aim = aim if aim > 0 else target
    y_aim = space(aim)
    default_slope = DEFAULT_LOG_SLOPE[kind]  # relative: d log v / d q

    def plausible(slope: float, v_ref: float) -> bool:
        """A slope (in the search space) of the right sign and a sane relative size."""
        relative = slope / v_ref if dssim else slope
        return math.copysign(1.0, relative) == math.copysign(1.0, default_slope) and (
            MIN_LOG_SLOPE <= abs(relative) <= MAX_LOG_SLOPE
        )

    data_by_q: dict[int, bytes] = {}
    value_by_q: dict[int, float] = {}
    trials: list[tuple[int, int, float]] = []

    def run(q: int) -> float:
        data = encode(q)
        value = float(len(data)) if not dssim else float(measure(data))
        data_by_q[q] = data
        value_by_q[q] = value
        trials.append((q, len(data), value))
        return value

    def bracket() -> tuple[int | None, int | None]:
        """(best quality known to meet the target, nearest known to miss it on the far side).

        dssim: the lowest meeting quality and the highest missing one below it; size: the
        highest fitting quality and the lowest one above it that does not fit. Noise (a
        trial on the wrong side) is left out."""
        good = [q for q, v in value_by_q.items() if meets(v)]
        bad = [q for q, v in value_by_q.items() if not meets(v)]
        if dssim:
            best = min(good) if good else None
            miss = [q for q in bad if best is None or q < best]
            return best, (max(miss) if miss else None)
        best = max(good) if good else None
        miss = [q for q in bad if best is None or q > best]
        return best, (min(miss) if miss else None)

    def done() -> bool:
        if any(within(v) for v in value_by_q.values()):
            return True
        best, miss = bracket()
        if best is not None and miss is not None and abs(best - miss) <= 1:
            return True  # adjacent qualities: best is the optimum among integers
        if dssim:
            if best == low or (best is None and miss == high):
                return True  # the target lies below low (met there) or above high
        elif best == high or (best is None and miss == low):
            return True
        return False

    def estimate() -> float:
        """Where the curve reaches the aim, from the trials (and the prior)."""
        points = sorted((q, space(v)) for q, v in value_by_q.items() if v > 0)
        best, miss = bracket()
        if best is not None and miss is not None:
            (q0, y0), (q1, y1) = (
                (best, space(value_by_q[best])),
                (miss, space(value_by_q[miss])),
            )
            if y0 != y1 and min(y0, y1) <= y_aim <= max(y0, y1):
                return q0 + (y_aim - y0) * (q1 - q0) / (y1 - y0)
            return (q0 + q1) / 2.0
        # One side only: extrapolate from the trial nearest the aim.
        q_ref, y_ref = min(points, key=lambda p: (abs(p[1] - y_aim), -p[0]))
        v_ref = value_by_q[q_ref]
        if len(points) >= 2:
            others = [p for p in points if p[0] != q_ref]
            q2, y2 = min(others, key=lambda p: abs(p[0] - q_ref))
            slope = (y2 - y_ref) / (q2 - q_ref)
            if plausible(slope, v_ref):
                return q_ref + (y_aim - y_ref) / slope
        if prior is not None:
            guess = prior.shifted_through(q_ref, v_ref).quality_for(aim)
            if guess is not None and math.isfinite(guess):
                return guess
        slope = default_slope * v_ref if dssim else default_slope
        return q_ref + (y_aim - y_ref) / slope

    def next_quality() -> int | None:
        best, miss = bracket()
        # The open interval the optimum's neighbours lie in.
        if dssim:
            lo = (miss + 1) if miss is not None else low
            hi = (best - 1) if best is not None else high
        else:
            lo = (best + 1) if best is not None else low
            hi = (miss - 1) if miss is not None else high
        lo, hi = max(lo, low), min(hi, high)
        if lo > hi:
            return None
        q_est = estimate()
        if not math.isfinite(q_est):
            q_est = (lo + hi) / 2.0
        q = min(max(round(q_est), lo), hi)
        if q in value_by_q:  # noise: take the nearest untried quality in the interval
            untried = [c for c in range(lo, hi + 1) if c not in value_by_q]
            if not untried:
                return None
            q = min(untried, key=lambda c: (abs(c - q_est), c))
        return q

    # The first trial.
    if first_guess is None and prior is not None:
        guess = prior.quality_for(aim)
        first_guess = round(guess) if guess is not None and math.isfinite(guess) else None
    q = first_guess if first_guess is not None else round((low + high) / 2.0)
    q = min(max(int(q), low), high)
    run(q)
    while not done() and len(trials) < max_encodes:
        q = next_quality()
        if q is None:
            break
        run(q)

    # The answer: the best quality that meets the target, else the closest one.
    best, _ = bracket()
    if best is not None:
        chosen = best
        # Among several within the band, the cheapest: the lowest (dssim) / highest (size) q.
    else:
        chosen = max(value_by_q) if dssim else min(value_by_q)
    value = value_by_q[chosen]
    met = meets(value)
    limited = None
    if dssim:
        if chosen == high and not met:
            limited = "high"
        elif chosen == low and met and not within(value):
            limited = "low"
    elif chosen == low and not met:
        limited = "low"
    elif chosen == high and met and not within(value):
        limited = "high"
    result = SearchResult(
        quality=chosen,
        data=data_by_q[chosen],
        encodes=len(trials),
        achieved=value,
        target_met=met,
        trials=trials,
        within=within(value),
        limited=limited,
    )
    if final is not None:
        data = final(chosen)
        result.encodes += 1
        value = float(len(data)) if not dssim else float(measure(data))
        if dssim or meets(value) or not result.target_met:
            result.data, result.achieved, result.final = data, value, True
            result.target_met, result.within = meets(value), within(value)
    return result


def fit_max_bytes(
    encode: Callable[[int], bytes],
    data: bytes,
    quality: int,
    max_bytes: int,
    *,
    low: int = 1,
    prior: QualityCurve | None = None,
    max_encodes: int = MAX_ENCODES,
) -> SearchResult:
    """imgproxy's ``max_bytes``: ``data`` (encoded at ``quality``) as it is when it fits, else
    the highest quality below ``quality`` whose encode fits (a size search in
    ``[low, quality - 1]``), else the smallest tried (``target_met`` False)."""
    if max_bytes <= 0 or len(data) <= max_bytes:
        return SearchResult(quality, data, 0, float(len(data)), True, [], True)
    if quality <= low:
        return SearchResult(quality, data, 0, float(len(data)), False, [], False, "low")
    start = len(data)
    # One known point: the curve through it with the default slope, unless a prior is given.
    curve = prior or QualityCurve(((float(quality), float(start)),), DEFAULT_LOG_SLOPE["size"])
    result = search_quality(
        encode,
        len,
        target=float(max_bytes),
        low=low,
        high=quality - 1,
        allowed_error=0.05,
        kind="size",
        prior=curve.shifted_through(quality, start),
        max_encodes=max_encodes,
    )
    result.trials.insert(0, (quality, start, float(start)))
    return result


SizeBucket = tuple[str, int, str]


class GuessHistory:
    """Recent searches per (format, size bucket, method), for first guesses and prior curves.

    Each search is kept as its fitted line in (quality, log value) (values divided by
    ``scale``: pass the pixel count for sizes, so bytes become bytes per pixel). The prior
    for a key is the median over its last ``per_key`` searches at every 5 quality steps.
    Bounded: ``max_keys`` keys (least recently used dropped) x ``per_key`` entries.
    Thread-safe."""

    def __init__(self, max_keys: int = 256, per_key: int = 16):
        self.max_keys = max_keys
        self.per_key = per_key
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, deque[tuple[float, float, float]]] = OrderedDict()

    @staticmethod
    def key(fmt: str, width: int, height: int, method: str) -> SizeBucket:
        """Images within about an octave of pixels share a bucket (720x720 and 720x480 do)."""
        pixels = max(1, width * height)
        return fmt, math.floor(math.log2(pixels)), method

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(
        self,
        key: tuple,
        trials: Sequence[tuple[int, int, float]],
        kind: Kind,
        *,
        scale: float = 1.0,
    ) -> None:
        points = [(float(q), math.log(v / scale)) for q, _, v in trials if v > 0]
        if not points:
            return
        default = DEFAULT_LOG_SLOPE[kind]
        slope = default
        qs = {q for q, _ in points}
        if len(qs) >= 2:
            mq = sum(q for q, _ in points) / len(points)
            my = sum(y for _, y in points) / len(points)
            sxx = sum((q - mq) ** 2 for q, _ in points)
            fitted = sum((q - mq) * (y - my) for q, y in points) / sxx
            if math.copysign(1.0, fitted) == math.copysign(1.0, default) and (
                MIN_LOG_SLOPE <= abs(fitted) <= MAX_LOG_SLOPE
            ):
                slope = fitted
            center = (mq, my)
        else:
            center = points[0]
        with self._lock:
            entries = self._entries.get(key)
            if entries is None:
                entries = self._entries[key] = deque(maxlen=self.per_key)
            self._entries.move_to_end(key)
            entries.append((center[0], center[1], slope))
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)

    def prior(self, key: tuple, *, scale: float = 1.0) -> QualityCurve | None:
        with self._lock:
            entries = list(self._entries.get(key, ()))
            if entries:
                self._entries.move_to_end(key)
        if not entries:
            return None
        points = []
        for q in range(0, 101, 5):
            logs = sorted(y + slope * (q - qc) for qc, y, slope in entries)
            middle = len(logs) // 2
            median = logs[middle] if len(logs) % 2 else (logs[middle - 1] + logs[middle]) / 2
            points.append((float(q), math.exp(median) * scale))
        return QualityCurve.from_points(points)

    def first_guess(
        self, key: tuple, target: float, low: int, high: int, *, scale: float = 1.0
    ) -> int | None:
        curve = self.prior(key, scale=scale)
        guess = curve.quality_for(target) if curve is not None else None
        if guess is None or not math.isfinite(guess):
            return None
        return min(max(round(guess), low), high)

    def search(
        self,
        key: tuple,
        encode: Callable[[int], bytes],
        measure: Callable[[bytes], float],
        *,
        kind: Kind,
        scale: float = 1.0,
        **kwargs,
    ) -> SearchResult:
        """``search_quality`` with this history's prior for ``key``, then recorded in it."""
        prior = kwargs.pop("prior", None) or self.prior(key, scale=scale)
        result = search_quality(encode, measure, kind=kind, prior=prior, **kwargs)
        self.record(key, result.trials, kind, scale=scale)
        return result
