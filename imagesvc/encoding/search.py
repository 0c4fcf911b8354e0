"""Autoquality: the search for the quality that meets a target (README "Autoquality search").

Pure logic over callables, so that any encoder and any measure plug in:
``encode(quality) -> bytes`` and ``measure(data) -> float`` (the DSSIM of the decoded bytes, a
region-weighted DSSIM, ...; for ``kind="size"`` the measure is ``len``), and optionally
``estimate(quality) -> float``, a cheap prediction of the measure (``sample.Estimator``: the
encode of a mosaic of tiles sampled from the image, about an eighth of its pixels).

The model: the measure is a monotone, smooth function of the quality (DSSIM falls, bytes
grow). The search interpolates that curve instead of bisecting:

1. With ``estimate``, the same search (steps 2-5) first runs on it, settling sooner (within
   ``ESTIMATE_TOLERANCE`` of the aim); the curve its calls trace, corrected by
   ``estimate_bias`` (what ``GuessHistory`` learned of the full image's measure over the
   estimate), is the prior of the search on ``encode``. Its calls are not encodes: the result
   reports them and their cost (``estimate_cost``, in encodes of the image) apart.
2. The first quality is ``first_guess``, else where ``prior`` (that curve; else the previous
   images of this size and format from ``GuessHistory``, or an ML predictor's curve) reaches
   the aim, else the middle of ``[low, high]``.
3. With one trial, the prior's shape is shifted through it (log space) and solved for the
   aim; without a prior, a default slope per kind is used.
4. With two or more, the trials that bracket the aim are interpolated linearly (regula falsi,
   Illinois-style when one end stays put: JPEG's curves jump at q90, where libvips stops
   subsampling chroma) in ``(q, DSSIM)`` for DSSIM, which is close to linear in the quality
   around usual targets, and in ``(q, log bytes)`` for sizes; unbracketed, the secant of the
   two nearest trials extrapolates (the prior, else a default slope, when the secant has the
   wrong sign or size: encoders are not exactly monotone).
5. It stops when a trial is within ``allowed_error`` of the target, when two adjacent
   qualities bracket it (the optimum among integers), at an end of ``[low, high]`` past which
   the target lies (the closest end is returned, ``limited`` says which, not an error), or at
   ``max_encodes``.

What "meeting the target" means (unchanged by the aim):

* ``dssim``: DSSIM <= target + allowed_error. The best quality is the lowest one that meets it
  (fewest bytes); a trial is *within* when |DSSIM - target| <= allowed_error. The search aims
  at target + ``DSSIM_AIM`` x allowed_error, the middle of the band's upper half: answers
  nearer the ceiling are smaller files, and half the allowed error is left for the
  prediction's error.
* ``size``: bytes <= target (a hard limit). The best quality is the highest one that fits; a
  trial is *within* when target x (1 - allowed_error) <= bytes <= target: for sizes
  ``allowed_error`` is a fraction of the target. The search aims at the band's middle.

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
MIN_MEANINGFUL = 1e-6  # DSSIM below this is rounding noise (and a byte count is >= 1)
MAX_ESTIMATES = 5  # calls of ``estimate`` at most
# Where DSSIM searches aim: target + DSSIM_AIM x allowed_error (module docstring). Chosen on
# the first half of bench/autoquality.py's corpus (0 and 0.25-0.75 tried: 0.5 gave the
# fewest bytes over the optimum for the encodes), checked on the other half.
DSSIM_AIM = 0.5
# The search on the estimate settles within this of the aim (|log(value / aim)|): the
# estimate's own error on one image is of that order (3-10 % in the photo corpus, after its
# learned bias), so a closer estimate is not worth its calls. The DSSIM band's half-width
# relative to the default target (0.001 / 0.012).
ESTIMATE_TOLERANCE = 0.08


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


def first_trial_for_one_encode(
    curve: QualityCurve,
    target: float,
    allowed_error: float,
    low: int,
    high: int,
    guess: int,
    log_error: float,
) -> int:
    """The first quality of a DSSIM search on a predicted ``curve`` whose log DSSIM is off by
    a normal error of deviation ``log_error``: ``guess`` (where the curve reaches the aim), or
    ``low`` when that is likelier to settle the search in one encode.

    A trial inside the range settles it only inside the band (|DSSIM - target| <=
    ``allowed_error``); ``low`` settles it whenever it meets the target (the answer is then
    ``low``: the target lies at or below the range, and ``low`` is the smallest file that
    meets it, the optimum). Against a model error of ~25 % a band ~10 % wide gives a guess
    inside the range ~16 % odds, so a prediction that puts the low end near the band tries it
    first, at no cost in bytes. (The high end settles whenever it is not better than the band
    too, but it is the largest file among the band's qualities: not tried first.)
    ``log_error`` <= 0: ``guess``."""
    if log_error <= 0 or guess <= low or low >= high:
        return guess
    upper = math.log(target + allowed_error)
    lower = math.log(target - allowed_error) if target > allowed_error else -math.inf

    def below(bound: float, q: int) -> float:  # P(log DSSIM at q <= bound)
        if bound == -math.inf:
            return 0.0
        z = (bound - curve.log_value_at(q)) / log_error
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    if guess >= high:  # settles unless the DSSIM there beats the band
        at_guess = 1.0 - below(lower, high)
    else:
        at_guess = below(upper, guess) - below(lower, guess)
    return low if below(upper, low) > at_guess else guess


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
    estimates: list[tuple[int, float]] = field(default_factory=list)  # (q, estimated measure)
    estimate_cost: float = 0.0  # the estimates' cost, in encodes

    @property
    def cost(self) -> float:
        """Encodes plus the estimates' cost (in encodes)."""
        return self.encodes + self.estimate_cost


def _check(kind: str, target: float, low: int, high: int, allowed_error: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (target > 0 and math.isfinite(target)):
        raise ValueError("target must be a finite number > 0")
    if not 1 <= low <= high <= 100:
        raise ValueError(f"need 1 <= low <= high <= 100, got [{low}, {high}]")
    if not allowed_error >= 0:
        raise ValueError("allowed_error must be >= 0")


class _Goal:
    """The target's semantics (module docstring): what meets it, what is within the band, the
    value aimed at and the space the trials are interpolated in."""

    __slots__ = ("dssim", "target", "low", "high", "allowed_error", "aim", "y_aim", "_edge")

    def __init__(self, kind: Kind, target: float, low: int, high: int, allowed_error: float):
        self.dssim = kind == "dssim"
        self.target, self.low, self.high = target, low, high
        self.allowed_error = allowed_error
        if self.dssim:
            self._edge = target + allowed_error  # the ceiling
            self.aim = target + DSSIM_AIM * allowed_error
        else:
            self._edge = target * (1.0 - min(allowed_error, 1.0))  # the band's floor
            # Aim inside the band (sizes are a hard limit: just under the target, never over).
            aim = target * (1.0 - min(allowed_error, 1.0) / 2.0)
            self.aim = aim if aim > 0 else target
        self.y_aim = self.space(self.aim)

    def meets(self, v: float) -> bool:
        return v <= self._edge if self.dssim else v <= self.target

    def within(self, v: float) -> bool:
        if self.dssim:
            return abs(v - self.target) <= self.allowed_error
        return self._edge <= v <= self.target

    def space(self, v: float) -> float:
        """DSSIM is close to linear in the quality around usual targets (JPEG, WebP, AVIF at
        720 px; log DSSIM bends), bytes close to exponential: DSSIM itself and log bytes."""
        return v if self.dssim else math.log(v)

    def plausible(self, slope: float, v_ref: float) -> bool:
        """A slope (in the search space) of the right sign and a sane relative size."""
        default = DEFAULT_LOG_SLOPE["dssim" if self.dssim else "size"]
        relative = slope / v_ref if self.dssim else slope
        return math.copysign(1.0, relative) == math.copysign(1.0, default) and (
            MIN_LOG_SLOPE <= abs(relative) <= MAX_LOG_SLOPE
        )

    def bracket(self, values: dict[int, float]) -> tuple[int | None, int | None]:
        """(best quality known to meet the target, nearest known to miss it on the far side).

        dssim: the lowest meeting quality and the highest missing one below it; size: the
        highest fitting quality and the lowest one above it that does not fit. Noise (a
        trial on the wrong side) is left out."""
        good = [q for q, v in values.items() if self.meets(v)]
        bad = [q for q, v in values.items() if not self.meets(v)]
        if self.dssim:
            best = min(good) if good else None
            miss = [q for q in bad if best is None or q < best]
            return best, (max(miss) if miss else None)
        best = max(good) if good else None
        miss = [q for q in bad if best is None or q > best]
        return best, (min(miss) if miss else None)

    def settled(self, values: dict[int, float]) -> bool:
        """Nothing left to search: a trial within the band, two adjacent qualities that bracket
        the target (the best is the optimum among integers), or the end past which it lies."""
        if any(self.within(v) for v in values.values()):
            return True
        best, miss = self.bracket(values)
        if best is not None and miss is not None and abs(best - miss) <= 1:
            return True
        if self.dssim:
            return best == self.low or (best is None and miss == self.high)
        return best == self.high or (best is None and miss == self.low)


class _EstimateGoal(_Goal):
    """The goal of the search on the estimate: the same aim, settled sooner (a value within
    ``ESTIMATE_TOLERANCE`` of the aim, relatively): the estimate's error on one image is of
    that order, so more precision is not worth its calls."""

    __slots__ = ()

    def within(self, v: float) -> bool:
        return v > 0 and abs(math.log(v / self.aim)) <= ESTIMATE_TOLERANCE


def _predict(goal: _Goal, values: dict[int, float], prior: QualityCurve | None) -> float:
    """Where the curve reaches the aim, from the trials (and the prior)."""
    space, y_aim = goal.space, goal.y_aim
    points = sorted((q, space(v)) for q, v in values.items() if v > 0)
    best, miss = goal.bracket(values)
    if best is not None and miss is not None:
        (q0, y0), (q1, y1) = (best, space(values[best])), (miss, space(values[miss]))
        # Regula falsi, Illinois-style: when the last trials all fell on one side, the end on
        # the other side has stayed put (a curve that bends or jumps, as JPEG's at q90 where
        # libvips stops subsampling chroma); its distance to the aim is halved for each.
        order = list(values)
        last_meets = goal.meets(values[order[-1]])
        repeats = 0
        for q in reversed(order):
            if goal.meets(values[q]) != last_meets:
                break
            repeats += 1
        if repeats >= 2:
            factor = 0.5 ** (repeats - 1)
            if last_meets:
                y1 = y_aim + (y1 - y_aim) * factor
            else:
                y0 = y_aim + (y0 - y_aim) * factor
        if y0 != y1 and min(y0, y1) <= y_aim <= max(y0, y1):
            return q0 + (y_aim - y0) * (q1 - q0) / (y1 - y0)
        return (q0 + q1) / 2.0
    # One side only: extrapolate from the bracket's end, the trial nearest the unexplored
    # side (on a flat, noisy stretch the one nearest the aim in value may lie behind it).
    q_ref = best if best is not None else miss
    # A DSSIM of 0 (an encode identical to the image: flat or synthetic pictures) has no
    # scale: measure slopes against the smallest DSSIM that means anything.
    y_ref, v_ref = space(values[q_ref]), max(values[q_ref], MIN_MEANINGFUL)
    if len(points) >= 2:
        others = [p for p in points if p[0] != q_ref]
        q2, y2 = min(others, key=lambda p: abs(p[0] - q_ref))
        slope = (y2 - y_ref) / (q2 - q_ref)
        if goal.plausible(slope, v_ref):
            return q_ref + (y_aim - y_ref) / slope
    if prior is not None:
        guess = prior.shifted_through(q_ref, v_ref).quality_for(goal.aim)
        # Only a guess on the side the trial points to (a prior that bends the wrong way
        # there is no guide): lower when the trial met the aim (DSSIM) or overshot it (size).
        lower = values[q_ref] <= goal.aim if goal.dssim else values[q_ref] > goal.aim
        if (
            guess is not None
            and math.isfinite(guess)
            and (guess < q_ref if lower else guess > q_ref)
        ):
            return guess
    slope = DEFAULT_LOG_SLOPE["dssim" if goal.dssim else "size"]
    slope = slope * v_ref if goal.dssim else slope
    return q_ref + (y_aim - y_ref) / slope


def _next_quality(goal: _Goal, values: dict[int, float], prior: QualityCurve | None) -> int | None:
    best, miss = goal.bracket(values)
    # The open interval the optimum's neighbours lie in.
    if goal.dssim:
        lo = (miss + 1) if miss is not None else goal.low
        hi = (best - 1) if best is not None else goal.high
    else:
        lo = (best + 1) if best is not None else goal.low
        hi = (miss - 1) if miss is not None else goal.high
    lo, hi = max(lo, goal.low), min(hi, goal.high)
    if lo > hi:
        return None
    q_est = _predict(goal, values, prior)
    if not math.isfinite(q_est):
        q_est = (lo + hi) / 2.0
    q = min(max(round(q_est), lo), hi)
    if q in values:  # noise: take the nearest untried quality in the interval
        untried = [c for c in range(lo, hi + 1) if c not in values]
        if not untried:
            return None
        q = min(untried, key=lambda c: (abs(c - q_est), c))
    return q


def _explore(
    evaluate: Callable[[int], float],
    goal: _Goal,
    first_guess: int | None,
    prior: QualityCurve | None,
    max_trials: int,
    step: Callable[[int], int] | None = None,
) -> dict[int, float]:
    """The trials of one curve, {quality: value} in the order tried (module docstring).
    ``max_trials`` counts quality steps (``step``: qualities of one step cost one trial)."""
    step = step or (lambda q: q)
    if first_guess is None and prior is not None:
        guess = prior.quality_for(goal.aim)
        first_guess = round(guess) if guess is not None and math.isfinite(guess) else None
    q = first_guess if first_guess is not None else round((goal.low + goal.high) / 2.0)
    values: dict[int, float] = {}
    q = min(max(int(q), goal.low), goal.high)
    values[q] = evaluate(q)
    while not goal.settled(values) and len({step(v) for v in values}) < max_trials:
        q = _next_quality(goal, values, prior)
        if q is None:
            break
        values[q] = evaluate(q)
    return values


def estimate_curve(
    estimates: Sequence[tuple[int, float]],
    prior: QualityCurve | None,
    kind: Kind,
    bias: float = 0.0,
) -> QualityCurve | None:
    """The curve the cheap estimate traced, times ``exp(bias)`` (the full image's measure
    over the estimate's, in log, as ``GuessHistory`` learned it). With one point its slope is
    the prior's there, else the default."""
    points = [(float(q), v * math.exp(bias)) for q, v in estimates if v > 0 and math.isfinite(v)]
    if not points:
        return None
    if len({q for q, _ in points}) >= 2:
        curve = QualityCurve.from_points(points)
        (q0, v0), (q1, v1) = curve.points[0], curve.points[-1]
        if _slope_plausible((math.log(v1) - math.log(v0)) / (q1 - q0), kind):
            return curve
        # Noise, not a curve (DSSIM ~1e-6 at every quality of a flat picture, rising with
        # it): only the last estimate, the one nearest the aim, with the default slope.
        return QualityCurve.from_points(points[-1:], DEFAULT_LOG_SLOPE[kind])
    q = points[-1][0]
    slope = prior.slope_at(q) if prior is not None else None
    if slope is None or not _slope_plausible(slope, kind):
        slope = DEFAULT_LOG_SLOPE[kind]
    return QualityCurve.from_points(points[-1:], slope)


def _slope_plausible(log_slope: float, kind: Kind) -> bool:
    """A slope of log(measure) per quality step of the right sign and a sane size."""
    default = DEFAULT_LOG_SLOPE[kind]
    return math.copysign(1.0, log_slope) == math.copysign(1.0, default) and (
        MIN_LOG_SLOPE <= abs(log_slope) <= MAX_LOG_SLOPE
    )


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
    estimate: Callable[[int], float] | None = None,
    estimate_cost: float = 0.0,
    estimate_bias: float = 0.0,
    max_estimates: int = MAX_ESTIMATES,
    quality_step: Callable[[int], int] | None = None,
) -> SearchResult:
    """Find the quality in ``[low, high]`` that meets ``target`` (module docstring).

    ``measure`` is ignored for ``kind="size"`` (the measure is the byte count) and may be
    None there. The result carries every trial; ``GuessHistory.record`` learns from them.

    ``estimate`` (optional): quality -> the measure predicted for the full image by a cheap
    proxy (a sampled mosaic's encode: its DSSIM, or its bytes over the sampled share of the
    pixels), costing ``estimate_cost`` encodes a call. The same search runs on it first (at
    most ``max_estimates`` calls); the curve it traces, times ``exp(estimate_bias)``, is the
    prior of the search on ``encode``.

    ``quality_step`` (optional): quality -> the first quality of its step, for encoders whose
    qualities come in steps that write the same file (AVIF): a quality whose step was tried
    is known without an encode (nor an estimate)."""
    _check(kind, target, low, high, allowed_error)
    if max_encodes < 1:
        raise ValueError("max_encodes must be >= 1")
    goal = _Goal(kind, target, low, high, allowed_error)
    dssim = goal.dssim
    estimates: dict[int, float] = {}
    if estimate is not None and quality_step is not None:
        estimate = _per_step(estimate, quality_step)
    if estimate is not None and max_estimates > 0:
        loose = _EstimateGoal(kind, target, low, high, allowed_error)
        estimates = _explore(
            lambda q: float(estimate(q)), loose, first_guess, prior, max_estimates, quality_step
        )
        curve = estimate_curve(list(estimates.items()), prior, kind, estimate_bias)
        if curve is not None:
            prior, first_guess = curve, None

    data_by_q: dict[int, bytes] = {}
    trials: list[tuple[int, int, float]] = []

    by_step: dict[int, tuple[bytes, float]] = {}

    def run(q: int) -> float:
        step = quality_step(q) if quality_step is not None else q
        if step in by_step:  # the same file as a quality tried: no encode
            data, value = by_step[step]
        else:
            data = encode(q)
            value = float(len(data)) if not dssim else float(measure(data))
            by_step[step] = (data, value)
            trials.append((q, len(data), value))
        data_by_q[q] = data
        return value

    value_by_q = _explore(run, goal, first_guess, prior, max_encodes, quality_step)

    # The answer: the best quality that meets the target, else the closest one.
    best, _ = goal.bracket(value_by_q)
    if best is not None:
        chosen = best
    else:
        chosen = max(value_by_q) if dssim else min(value_by_q)
    value = value_by_q[chosen]
    met = goal.meets(value)
    limited = None
    if dssim:
        if chosen == high and not met:
            limited = "high"
        elif chosen == low and met and not goal.within(value):
            limited = "low"
    elif chosen == low and not met:
        limited = "low"
    elif chosen == high and met and not goal.within(value):
        limited = "high"
    result = SearchResult(
        quality=chosen,
        data=data_by_q[chosen],
        encodes=len(trials),
        achieved=value,
        target_met=met,
        trials=trials,
        within=goal.within(value),
        limited=limited,
        estimates=list(estimates.items()),
        estimate_cost=len({(quality_step or int)(q) for q in estimates}) * estimate_cost,
    )
    if final is not None:
        data = final(chosen)
        result.encodes += 1
        value = float(len(data)) if not dssim else float(measure(data))
        if dssim or goal.meets(value) or not result.target_met:
            result.data, result.achieved, result.final = data, value, True
            result.target_met, result.within = goal.meets(value), goal.within(value)
    return result


def _per_step(estimate: Callable[[int], float], step: Callable[[int], int]):
    """``estimate`` called once per quality step (see ``search_quality``)."""
    seen: dict[int, float] = {}

    def per_step(q: int) -> float:
        key = step(q)
        if key not in seen:
            seen[key] = estimate(q)
        return seen[key]

    return per_step


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


class _Entry:
    __slots__ = ("lines", "biases")

    def __init__(self, per_key: int):
        self.lines: deque[tuple[float, float, float]] = deque(maxlen=per_key)
        self.biases: deque[float] = deque(maxlen=per_key)


class GuessHistory:
    """Recent searches per (format, size bucket, method), for first guesses and prior curves.

    Each search is kept as its fitted line in (quality, log value) (values divided by
    ``scale``: pass the pixel count for sizes, so bytes become bytes per pixel). The prior
    for a key is the median over its last ``per_key`` searches at every 5 quality steps.
    Searches with a cheap estimate also leave the estimate's bias (log of the measure over
    the estimate near the same qualities); ``bias`` is its median, which the next searches
    correct their estimates by. Bounded: ``max_keys`` keys (least recently used dropped) x
    ``per_key`` entries. Thread-safe."""

    def __init__(self, max_keys: int = 256, per_key: int = 16):
        self.max_keys = max_keys
        self.per_key = per_key
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    @staticmethod
    def key(fmt: str, width: int, height: int, method: str) -> SizeBucket:
        """Images within about an octave of pixels share a bucket (720x720 and 720x480 do)."""
        pixels = max(1, width * height)
        return fmt, math.floor(math.log2(pixels)), method

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _entry(self, key: tuple) -> _Entry:
        """The key's entry, made most recently used (created if new); under the lock."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self.per_key)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return entry

    def record(
        self,
        key: tuple,
        trials: Sequence[tuple[int, int, float]],
        kind: Kind,
        *,
        scale: float = 1.0,
        estimates: Sequence[tuple[int, float]] = (),
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
        bias = _estimate_bias(trials, estimates, kind)
        with self._lock:
            entry = self._entry(key)
            entry.lines.append((center[0], center[1], slope))
            if bias is not None:
                entry.biases.append(bias)

    def bias(self, key: tuple) -> float:
        """The median bias of the key's estimates (log measure / estimate), 0 when unknown."""
        with self._lock:
            entry = self._entries.get(key)
            biases = sorted(entry.biases) if entry is not None else []
        if not biases:
            return 0.0
        middle = len(biases) // 2
        return biases[middle] if len(biases) % 2 else (biases[middle - 1] + biases[middle]) / 2

    def prior(self, key: tuple, *, scale: float = 1.0) -> QualityCurve | None:
        with self._lock:
            entry = self._entries.get(key)
            entries = list(entry.lines) if entry is not None else []
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
        """``search_quality`` with this history's prior (and estimate bias) for ``key``, then
        recorded in it."""
        prior = kwargs.pop("prior", None) or self.prior(key, scale=scale)
        if kwargs.get("estimate") is not None and "estimate_bias" not in kwargs:
            kwargs["estimate_bias"] = self.bias(key)
        result = search_quality(encode, measure, kind=kind, prior=prior, **kwargs)
        self.record(key, result.trials, kind, scale=scale, estimates=result.estimates)
        return result


# A full trial this many quality steps or fewer from the estimate's span measures its bias.
BIAS_REACH = 2


def _estimate_bias(
    trials: Sequence[tuple[int, int, float]], estimates: Sequence[tuple[int, float]], kind: Kind
) -> float | None:
    """log(measure / estimate), averaged over the trials near the estimated qualities."""
    curve = estimate_curve(estimates, None, kind)
    if curve is None:
        return None
    first, last = curve.points[0][0], curve.points[-1][0]
    logs = [
        math.log(v) - curve.log_value_at(q)
        for q, _, v in trials
        if v > 0 and first - BIAS_REACH <= q <= last + BIAS_REACH
    ]
    return sum(logs) / len(logs) if logs else None
