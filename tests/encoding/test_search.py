"""The autoquality search (imagesvc/encoding/search.py): synthetic curves with counted encodes,
ends of the range, noise, the history, max_bytes, the cheap estimate and its learned bias, and
real libvips encodes measured by DSSIM (with and without the sample mosaic's estimate)."""

from __future__ import annotations

import math
import random
import statistics
import threading

import numpy as np
import pytest
from skimage import data as skdata

from imagesvc.encoding import sample
from imagesvc.encoding import search as search_module
from imagesvc.encoding.dssim import DssimReference
from imagesvc.encoding.search import (
    MAX_ESTIMATES,
    GuessHistory,
    QualityCurve,
    SearchResult,
    first_trial_for_one_encode,
    fit_max_bytes,
    search_quality,
)
from tests.images import from_array


class Curve:
    """A synthetic encoder: quality -> a payload whose "DSSIM" (or length) follows a smooth
    monotone curve, with optional multiplicative noise (fixed per quality); counts calls."""

    def __init__(self, kind, level, slope, bend=0.0, noise=0.0, seed=0):
        self.kind, self.level, self.slope, self.bend = kind, level, slope, bend
        rng = random.Random(seed)
        self.noise = {q: 1 + rng.uniform(-noise, noise) for q in range(1, 101)}
        self.calls = 0

    def value(self, q: int) -> float:
        # Linear in log value, bent above q70 (DSSIM falls faster, bytes grow faster).
        y = math.log(self.level) + self.slope * (q - 50)
        y += self.bend * max(0, q - 70) ** 2 * (1 if self.kind == "size" else -1)
        return math.exp(y) * self.noise[q]

    def encode(self, q: int) -> bytes:
        self.calls += 1
        if self.kind == "size":
            return b"x" * int(self.value(q))
        return repr(self.value(q)).encode()

    def exhaustive(self, target, error, low, high):
        if self.kind == "dssim":
            meeting = [q for q in range(low, high + 1) if self.value(q) <= target + error]
            return min(meeting) if meeting else None
        meeting = [q for q in range(low, high + 1) if int(self.value(q)) <= target]
        return max(meeting) if meeting else None


def measure(data: bytes) -> float:
    return float(data.decode())


def typical_curves(kind, n=200, seed=1, noise=0.0):
    rng = random.Random(seed)
    for i in range(n):
        if kind == "dssim":
            yield Curve(
                kind,
                rng.uniform(0.008, 0.03),
                -rng.uniform(0.012, 0.035),
                bend=0.0004,
                noise=noise,
                seed=i,
            )
        else:
            yield Curve(
                kind,
                rng.uniform(20_000, 60_000),
                rng.uniform(0.012, 0.035),
                bend=0.0005,
                noise=noise,
                seed=i,
            )


@pytest.mark.parametrize("kind", ["dssim", "size"])
def test_typical_curves_take_at_most_three_encodes_on_average(kind):
    target, error = (0.012, 0.001) if kind == "dssim" else (40_000, 0.05)
    history = GuessHistory()
    counts = []
    for curve in typical_curves(kind):
        result = history.search(
            ("jpeg", 19, kind),
            curve.encode,
            measure,
            kind=kind,
            target=target,
            low=30,
            high=95,
            allowed_error=error,
        )
        assert result.encodes == curve.calls <= 6
        assert [q for q, _, _ in result.trials] == sorted(
            {q for q, _, _ in result.trials}, key=[q for q, _, _ in result.trials].index
        )  # no quality encoded twice
        counts.append(result.encodes)
        optimum = curve.exhaustive(target, error, 30, 95)
        if optimum is None:
            assert not result.target_met
            assert result.limited == ("high" if kind == "dssim" else "low")
            continue
        assert result.target_met
        value = curve.value(result.quality)
        if kind == "dssim":
            assert value <= target + error
            # Either within the band or the optimum among integers.
            assert result.within or result.quality == optimum
        else:
            assert len(result.data) <= target
            assert result.within or result.quality == optimum
    assert statistics.mean(counts) <= 3.0
    assert max(counts) <= 6


def test_without_history_still_converges():
    counts = []
    for curve in typical_curves("dssim", n=100, seed=7):
        result = search_quality(
            curve.encode,
            measure,
            target=0.015,
            low=30,
            high=95,
            allowed_error=0.001,
            kind="dssim",
            first_guess=None,
            prior=None,
        )
        counts.append(result.encodes)
        if curve.exhaustive(0.015, 0.001, 30, 95) is not None:
            assert result.target_met
    assert statistics.mean(counts) <= 3.5
    assert max(counts) <= 6


def test_unreachable_targets_return_the_closest_end():
    # DSSIM never gets down to the target: the highest quality, not met, no error.
    curve = Curve("dssim", 0.05, -0.01)
    result = search_quality(
        curve.encode, measure, target=0.001, low=60, high=80, allowed_error=0.0001, kind="dssim"
    )
    assert (result.quality, result.target_met, result.limited) == (80, False, "high")
    assert result.achieved == pytest.approx(curve.value(80))
    assert result.encodes <= 3
    # Already better than the target at the lowest quality: the lowest, met, limited low.
    curve = Curve("dssim", 0.001, -0.01)
    result = search_quality(
        curve.encode, measure, target=0.02, low=60, high=80, allowed_error=0.001, kind="dssim"
    )
    assert (result.quality, result.target_met, result.limited) == (60, True, "low")
    # Size: even the lowest quality is too big / the highest fits.
    curve = Curve("size", 50_000, 0.02)
    result = search_quality(
        curve.encode, len, target=100, low=10, high=90, allowed_error=0.05, kind="size"
    )
    assert (result.quality, result.target_met, result.limited) == (10, False, "low")
    assert result.encodes <= 3
    result = search_quality(
        curve.encode, len, target=10**9, low=10, high=90, allowed_error=0.05, kind="size"
    )
    assert (result.quality, result.target_met, result.limited) == (90, True, "high")


def test_noisy_non_monotone_curves_stay_bounded():
    counts = []
    for curve in typical_curves("dssim", n=150, seed=3, noise=0.08):
        result = search_quality(
            curve.encode,
            measure,
            target=0.012,
            low=30,
            high=95,
            allowed_error=0.001,
            kind="dssim",
            max_encodes=6,
        )
        counts.append(result.encodes)
        assert result.encodes <= 6
        # What is returned is what was measured for that quality.
        assert result.achieved == pytest.approx(curve.value(result.quality))
        if result.target_met:
            assert result.achieved <= 0.013
    assert statistics.mean(counts) <= 4


def test_flat_curve_and_single_quality_range():
    flat = Curve("dssim", 0.02, 0.0)
    result = search_quality(
        flat.encode, measure, target=0.01, low=40, high=90, allowed_error=0.001, kind="dssim"
    )
    assert result.encodes <= 6 and not result.target_met
    one = Curve("dssim", 0.02, -0.02)
    result = search_quality(
        one.encode, measure, target=0.01, low=70, high=70, allowed_error=0.001, kind="dssim"
    )
    assert (result.quality, result.encodes) == (70, 1)


def test_first_guess_and_prior_are_used():
    curve = Curve("dssim", 0.02, -0.025)
    result = search_quality(
        curve.encode,
        measure,
        target=curve.value(64),
        low=30,
        high=95,
        allowed_error=0.0005,
        kind="dssim",
        first_guess=64,
    )
    assert (result.quality, result.encodes, result.within) == (64, 1, True)
    # An exact prior curve (what an ML predictor would give): one encode, at the optimum: the
    # search aims at the upper half of the band (target + allowed_error / 2), so q70 (DSSIM
    # target + 0.0003) and not q71 (the target itself).
    prior = QualityCurve.from_points((q, curve.value(q)) for q in range(30, 96, 5))
    fresh = Curve("dssim", 0.02, -0.025)
    target, error = fresh.value(71), 0.0005
    result = search_quality(
        fresh.encode,
        measure,
        target=target,
        low=30,
        high=95,
        allowed_error=error,
        kind="dssim",
        prior=prior,
    )
    assert fresh.exhaustive(target, error, 30, 95) == 70
    assert (result.quality, result.encodes, result.within) == (70, 1, True)


def test_final_encode_for_slow_encoders():
    curve = Curve("dssim", 0.02, -0.025)
    finals = []

    def final(q):
        finals.append(q)
        return repr(curve.value(q) * 0.97).encode()  # the higher effort: a little better

    result = search_quality(
        curve.encode,
        measure,
        target=0.015,
        low=30,
        high=95,
        allowed_error=0.001,
        kind="dssim",
        final=final,
    )
    assert finals == [result.quality]
    assert result.final and result.encodes == curve.calls + 1
    assert result.achieved == pytest.approx(curve.value(result.quality) * 0.97)


def test_fit_max_bytes():
    curve = Curve("size", 60_000, 0.03)
    data = curve.encode(80)
    result = fit_max_bytes(curve.encode, data, 80, max_bytes=len(data) + 1)
    assert (result.quality, result.encodes, result.data) == (80, 0, data)
    result = fit_max_bytes(curve.encode, data, 80, max_bytes=30_000)
    assert result.target_met and len(result.data) <= 30_000
    assert result.quality == curve.exhaustive(30_000, 0, 1, 79) or result.within
    assert result.encodes <= 4
    result = fit_max_bytes(curve.encode, data, 80, max_bytes=10, low=50)
    assert (result.quality, result.target_met) == (50, False)


def test_quality_curve():
    curve = QualityCurve.from_points([(80, 0.01), (40, 0.04), (60, 0.02)])
    assert curve.points[0] == (40.0, 0.04)
    assert curve.value_at(60) == pytest.approx(0.02)
    assert curve.value_at(50) == pytest.approx(math.sqrt(0.04 * 0.02))
    assert curve.quality_for(0.02) == pytest.approx(60)
    assert curve.quality_for(0.005) == pytest.approx(100)  # extrapolated
    shifted = curve.shifted_through(60, 0.04)
    assert shifted.value_at(40) == pytest.approx(0.08)
    with pytest.raises(ValueError):
        QualityCurve(((50.0, 0.01),))  # one point needs a slope
    with pytest.raises(ValueError):
        search_quality(len, len, target=1, low=50, high=40, allowed_error=0.1, kind="size")


def test_history_is_bounded_and_thread_safe():
    history = GuessHistory(max_keys=4, per_key=3)
    assert history.prior(("jpeg", 19, "dssim")) is None

    def worker(k):
        for i in range(50):
            q = 40 + (i % 20)
            history.record(("jpeg", k % 6, "dssim"), [(q, 0, 0.02), (q + 5, 0, 0.017)], "dssim")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(history) <= 4
    key = next(iter(history._entries))
    assert len(history._entries[key].lines) <= 3
    assert history.first_guess(key, 0.02, 30, 95) is not None
    assert GuessHistory.key("jpeg", 720, 720, "dssim") == GuessHistory.key(
        "jpeg", 720, 480, "dssim"
    )


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_real_encodes_meet_a_dssim_target(fmt, sampled):
    pixels = np.ascontiguousarray(skdata.astronaut()[:, :, :3])
    if not sampled:
        pixels = np.ascontiguousarray(pixels[::2, ::2])  # 256 px: too small to sample
    image = from_array(pixels)
    reference = DssimReference(image)
    savers = {
        "jpeg": lambda img, q: img.jpegsave_buffer(Q=q, keep="none"),
        "webp": lambda img, q: img.webpsave_buffer(Q=q, keep="none"),
    }

    def save(q):
        return savers[fmt](image, q)

    calls = []

    def encode(q):
        calls.append(q)
        return save(q)

    estimator = sample.estimator(image, "dssim", savers[fmt])
    assert (estimator is not None) == sampled
    options = dict(estimate=estimator, estimate_cost=estimator.cost) if sampled else {}
    target, error = 0.015, 0.001
    result = search_quality(
        encode,
        reference.dssim_of,
        target=target,
        low=30,
        high=95,
        allowed_error=error,
        kind="dssim",
        **options,
    )
    assert result.encodes == len(calls) <= (2 if sampled else 6)
    if sampled:
        assert 1 <= len(result.estimates) == estimator.calls <= MAX_ESTIMATES
    # Measured again here, from the returned bytes.
    assert reference.dssim_of(result.data) == pytest.approx(result.achieved)
    assert result.target_met and result.achieved <= target + error
    # The exhaustive check: nothing much below the chosen quality meets the target too.
    lower = [q for q in range(30, result.quality) if reference.dssim_of(save(q)) <= target + error]
    assert result.within or not lower


def test_real_encodes_fit_a_size():
    image = from_array(np.ascontiguousarray(skdata.chelsea()))
    target = 12_000
    result = search_quality(
        lambda q: image.jpegsave_buffer(Q=q, keep="none"),
        len,
        target=target,
        low=10,
        high=95,
        allowed_error=0.05,
        kind="size",
    )
    assert len(result.data) <= target and result.target_met
    above = image.jpegsave_buffer(Q=result.quality + 1, keep="none")
    assert result.within or len(above) > target
    assert result.encodes <= 6


# --- the cheap estimate ----------------------------------------------------------------------


class Estimate:
    """A cheap estimate of a Curve: its value times a bias shared by every image and an error
    of this image's own; counts its calls."""

    def __init__(self, curve: Curve, bias: float, error: float):
        self.curve, self.bias, self.error = curve, bias, error
        self.calls = 0

    def __call__(self, q: int) -> float:
        self.calls += 1
        return self.curve.value(q) * self.bias * self.error


@pytest.mark.parametrize("kind", ["dssim", "size"])
def test_an_estimate_cuts_the_encodes_and_its_bias_is_learned(kind):
    target, error = (0.012, 0.001) if kind == "dssim" else (40_000, 0.05)
    options = dict(kind=kind, target=target, low=30, high=95, allowed_error=error)
    rng = random.Random(5)
    key = ("jpeg", 19, kind)
    sampled, plain = GuessHistory(), GuessHistory()
    encodes, costs, baseline = [], [], []
    for curve in typical_curves(kind, n=150, seed=11):
        estimate = Estimate(curve, 1.25, math.exp(rng.gauss(0, 0.04)))
        result = sampled.search(
            key, curve.encode, measure, estimate=estimate, estimate_cost=0.15, **options
        )
        # Honest counts: every encode, every estimate and its cost.
        assert result.encodes == curve.calls
        assert len(result.estimates) == estimate.calls <= MAX_ESTIMATES
        assert result.estimate_cost == pytest.approx(0.15 * estimate.calls)
        assert result.cost == pytest.approx(result.encodes + result.estimate_cost)
        encodes.append(result.encodes)
        costs.append(result.cost)
        optimum = curve.exhaustive(target, error, 30, 95)
        if optimum is None:
            assert not result.target_met
        else:
            assert result.target_met and (result.within or result.quality == optimum)
        baseline.append(plain.search(key, curve.encode, measure, **options).encodes)
    # The estimate is 25 % off for every image: the history learns it (log 1/1.25).
    assert sampled.bias(key) == pytest.approx(-math.log(1.25), abs=0.05)
    assert statistics.mean(encodes) <= 2.0
    assert statistics.mean(encodes) <= statistics.mean(baseline) - 0.5
    assert statistics.mean(costs) <= 2.5


def test_an_estimate_out_of_reach_ends_at_the_range_end():
    # Even q95 misses the DSSIM target: the estimate says so, one encode confirms it.
    curve = Curve("dssim", 0.2, -0.01)
    estimate = Estimate(curve, 1.0, 1.0)
    result = search_quality(
        curve.encode,
        measure,
        target=0.001,
        low=30,
        high=95,
        allowed_error=0.0001,
        kind="dssim",
        estimate=estimate,
        estimate_cost=0.1,
    )
    assert (result.quality, result.target_met, result.limited) == (95, False, "high")
    assert result.encodes == 1 and estimate.calls <= 3


def test_the_search_on_the_estimate_settles_within_its_tolerance():
    curve = Curve("size", 30_000, 0.03)
    calls = []

    def estimate(q):
        calls.append(q)
        return curve.value(q)

    search_quality(
        curve.encode,
        len,
        target=curve.value(60) * 1.05,  # the aim, 2.5 % under the target, is near q60
        low=30,
        high=95,
        allowed_error=0.05,
        kind="size",
        first_guess=59,  # 5 % under the aim: outside the band, within ESTIMATE_TOLERANCE
        estimate=estimate,
    )
    assert calls == [59]


def test_bracketed_interpolation_moves_the_end_that_stays_put():
    # JPEG DSSIM of a photo, q82-q90 (bench corpus, coffee): at q90 libvips stops subsampling
    # chroma and DSSIM drops by a third. After two misses below, plain regula falsi would
    # creep up one quality at a time (87, 88); halving q90's distance to the aim goes to 88.
    goal = search_module._Goal("dssim", 0.012, 30, 95, 0.001)
    values = {90: 0.682 * 0.012, 82: 1.337 * 0.012, 86: 1.158 * 0.012}
    assert search_module._next_quality(goal, values, None) == 88
    # Misses on both sides in turn: plain regula falsi.
    values = {82: 1.337 * 0.012, 90: 0.682 * 0.012}
    assert search_module._next_quality(goal, values, None) == 86


def test_a_noise_floor_curve_is_not_followed_upwards():
    # A flat picture (found on a held-out wallpaper): DSSIM ~1e-6 at every quality, rising a
    # little with it, the estimate too. Such a "curve" points the wrong way; the answer is
    # the range's floor, found in one encode instead of walking down from the top.
    def noise(q: int) -> float:
        return 1e-6 * (1 + q / 100)

    result = search_quality(
        lambda q: bytes(q),
        lambda data: noise(len(data)),
        target=0.01,
        low=30,
        high=95,
        allowed_error=0.001,
        estimate=lambda q: 5 * noise(q),
        estimate_cost=0.1,
    )
    assert result.quality == 30 and result.target_met
    assert result.encodes == 1


def test_qualities_of_one_step_are_encoded_once():
    # An encoder whose qualities come in steps of 3 (as AVIF's, in libaom's quantizer steps):
    # a quality whose step was tried is known without an encode.
    def step(q: int) -> int:
        return q - (q - 1) % 3

    encoded: list[int] = []

    def encode(q: int) -> bytes:
        encoded.append(step(q))
        return bytes(step(q))

    def measure(data: bytes) -> float:
        return 0.05 * math.exp(-0.03 * (len(data) - 30))

    result = search_quality(
        encode,
        measure,
        kind="dssim",
        target=0.0121,
        low=30,
        high=95,
        allowed_error=0.0001,
        quality_step=step,
    )
    assert len(encoded) == len(set(encoded)) == result.encodes
    assert result.target_met and measure(result.data) <= 0.0122
    # The answer's step is the lowest that meets the target (the step below does not).
    assert measure(bytes(step(step(result.quality) - 1))) > 0.0122


# --- the ML method's first trial --------------------------------------------------------------


def _falling(at_low: float, low: int = 30, slope: float = -0.025) -> QualityCurve:
    """A predicted DSSIM curve through ``(low, at_low)`` falling ``slope`` a step in log."""
    return QualityCurve.from_points([(q, at_low * math.exp(slope * (q - low))) for q in (30, 95)])


@pytest.mark.parametrize(
    ("at_low", "expected"),
    [
        (0.0205, 30),  # the low end predicted inside the band: it meets more often than not
        (0.024, 30),  # just over it: ~40 % odds of meeting there, against ~16 % at the guess
        (0.040, None),  # far over it: the guess
    ],
)
def test_the_low_end_goes_first_where_it_is_likelier_to_settle_in_one_encode(at_low, expected):
    curve = _falling(at_low)
    guess = int(round(curve.quality_for(0.0205)))
    first = first_trial_for_one_encode(curve, 0.02, 0.001, 30, 95, guess, 0.26)
    assert first == (guess if expected is None else expected)


def test_without_a_known_error_or_at_the_low_end_the_guess_stays():
    curve = _falling(0.024)
    assert first_trial_for_one_encode(curve, 0.02, 0.001, 30, 95, 37, 0.0) == 37
    assert first_trial_for_one_encode(curve, 0.02, 0.001, 30, 95, 30, 0.26) == 30
    # A sure model (tiny error) keeps its interior guess.
    assert first_trial_for_one_encode(curve, 0.02, 0.001, 30, 95, 37, 0.01) == 37


def test_a_guess_at_the_high_end_keeps_its_own_odds():
    # Predicted to need more than the range: the high end settles it (met or not).
    curve = _falling(0.2)
    assert first_trial_for_one_encode(curve, 0.02, 0.001, 30, 95, 95, 0.26) == 95


def test_the_low_end_first_settles_in_one_encode_where_the_guess_would_not():
    # The image meets 0.02 at q30 already (DSSIM 0.019 there); the model thinks q30 gives
    # 0.0235 and guesses q37. From the guess the search takes two encodes, from the low end one.
    truth = _falling(0.019)
    model = _falling(0.0235)
    guess = int(round(model.quality_for(0.0205)))
    first = first_trial_for_one_encode(model, 0.02, 0.001, 30, 95, guess, 0.26)
    assert guess > 30 and first == 30

    def run(q0: int) -> SearchResult:
        return search_quality(
            lambda q: bytes([q]),
            lambda data: truth.value_at(data[0]),
            target=0.02,
            low=30,
            high=95,
            allowed_error=0.001,
            first_guess=q0,
            prior=model,
        )

    assert (run(first).encodes, run(first).quality) == (1, 30)
    assert run(guess).encodes == 2 and run(guess).quality == 30
