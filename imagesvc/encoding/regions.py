"""Region-aware autoquality (issue 11): the DSSIM target applies to the person, the background
gets a looser one and a pre-filter (README "Region-aware autoquality").

The engine hands the encoder the regions at the encoded image's size (``RegionWeights``, from
`imagesvc.regions.masks.RegionMap.at`); the request's options are a ``RegionSpec``.

What the encoder does with them (``imagesvc.encoding.encoder``):

1. The background of the encoder input is pre-filtered (`imagesvc.regions.prefilter`, blended
   through the feathered person mask: no pixel of the person changes). ``DEFAULT_PREFILTER``
   and the automatic strength (``auto_sigma``: a share of the long side) were chosen on the
   tuning photos of ``bench/regions.py`` and checked on the held-out ones.
2. Lossy formats (JPEG, WebP, AVIF, with the DSSIM or ML autoquality method): the quality search
   measures ``RegionMeasure``: the person's DSSIM against the ORIGINAL image (windows
   centred on the person, probability >= 0.5, weighted ``skin x skin_weight + (1 - skin) x
   clothes_weight``) and the background's against the pre-filtered input (the other
   windows). The lowest quality where the person's DSSIM <= target + allowed_error and the
   background's <= ``background_target`` wins: the search runs on ``max(person, background x (target + allowed_error) /
   background_target)``, which meets ``target + allowed_error`` exactly when both do.
3. Lossless encodes (PNG, lossless WebP...): the pre-filter only.

The report: ``region_dssim`` person / skin / clothes / background (a region without pixels
is left out), ``achieved_dssim`` the person's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyvips

from imagesvc.v1 import image_service_pb2 as pb

# Chosen on the tuning photos of bench/regions.py (README "Region-aware autoquality").
DEFAULT_PREFILTER = "defocus"
BACKGROUND_TARGET_FACTOR = 4.0  # background_target = this x the autoquality target
# Automatic sigma by filter: this x the long side. The filters that blur person colours into
# the background need a feather as wide as their reach, which takes back what a stronger blur
# saves: 0.008 (10 px at 1280 px) was their best. ``defocus`` leaves the person out of its
# blur, so it can be as strong as a portrait lens: 0.04 (51 px at 1280 px).
SIGMA_PER_LONG_SIDE = {"gaussian": 0.008, "median": 0.008, "chroma": 0.008, "defocus": 0.04}
MIN_SIGMA = 1.0
MAX_SIGMA = {"gaussian": 32.0, "median": 32.0, "chroma": 32.0, "defocus": 160.0}
# Feather margin around the person: the filter's reach (2 sigma), so that no blurred person
# colour bleeds into the background next to the edge (the halo), at least 2 px. ``defocus``
# has no halo: its feather is the one the other filters get by default (2 x 0.008 of the long
# side), a soft edge only.
MARGIN_PER_SIGMA = 2.0
MIN_MARGIN = 2.0
HALO_FREE = frozenset({"defocus"})
# Below this share of person pixels (probability >= 0.5) there is no person to aim at: plain
# autoquality (no pre-filter, no region report).
MIN_PERSON_SHARE = 0.002
REGION_NAMES = ("person", "skin", "clothes", "background")


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """OutputOptions.regions, validated; None fields take the defaults."""

    background_target: float | None = None  # None: BACKGROUND_TARGET_FACTOR x the target
    skin_weight: float = 1.0
    clothes_weight: float = 1.0
    prefilter: str | None = None  # imagesvc.regions.prefilter.FILTERS; None: the default
    prefilter_sigma: float | None = None  # None: automatic


@dataclass(frozen=True, slots=True)
class RegionWeights:
    """The regions at the encoded image's size: ``person`` and ``skin`` (skin given person)
    probabilities, float32 H x W in [0, 1]."""

    person: np.ndarray
    skin: np.ndarray


@dataclass(frozen=True, slots=True)
class RegionPlan:
    """A ``RegionSpec`` resolved for one image and target."""

    prefilter: str
    sigma: float
    margin: float
    target: float
    allowed_error: float
    background_target: float
    skin_weight: float
    clothes_weight: float


def auto_sigma(width: int, height: int, method: str = DEFAULT_PREFILTER) -> float:
    """The pre-filter's automatic strength for an image: ``SIGMA_PER_LONG_SIDE[method]`` x its
    long side, within [MIN_SIGMA, MAX_SIGMA[method]]."""
    share = SIGMA_PER_LONG_SIDE[method] * max(width, height)
    return min(MAX_SIGMA[method], max(MIN_SIGMA, share))


def feather_margin(method: str, sigma: float, width: int, height: int) -> float:
    """The feather around the person: the filter's reach (``MARGIN_PER_SIGMA`` x sigma), or
    for a halo-free filter the reach of the default-strength Gaussian, at least MIN_MARGIN."""
    if method in HALO_FREE:
        sigma = auto_sigma(width, height, "gaussian")
    return max(MIN_MARGIN, MARGIN_PER_SIGMA * sigma)


def plan(
    spec: RegionSpec, target: float, allowed_error: float, width: int, height: int
) -> RegionPlan:
    method = spec.prefilter or DEFAULT_PREFILTER
    sigma = spec.prefilter_sigma or auto_sigma(width, height, method)
    return RegionPlan(
        prefilter=method,
        sigma=sigma,
        margin=feather_margin(method, sigma, width, height),
        target=target,
        allowed_error=allowed_error,
        background_target=spec.background_target or BACKGROUND_TARGET_FACTOR * target,
        skin_weight=spec.skin_weight,
        clothes_weight=spec.clothes_weight,
    )


def person_region(weights: RegionWeights) -> np.ndarray:
    """The person's pixels: probability >= 0.5 (bool H x W)."""
    return np.asarray(weights.person) >= 0.5


def has_person(weights: RegionWeights) -> bool:
    person = person_region(weights)
    return bool(person.size) and float(person.mean()) >= MIN_PERSON_SHARE


def prefiltered(image: pyvips.Image, weights: RegionWeights, region_plan: RegionPlan):
    """``image`` (a ``prepare``d one: 8-bit sRGB or grey, alpha or not) with its background
    pre-filtered. The chroma filter leaves a grey image as it is (it has no chroma)."""
    from imagesvc.regions.prefilter import prefilter

    colour_bands = image.bands - (1 if image.hasalpha() else 0)
    if region_plan.prefilter == "chroma" and colour_bands < 3:
        return image
    person = np.asarray(weights.person, dtype=np.float32)
    return prefilter(image, person, region_plan.prefilter, region_plan.sigma, region_plan.margin)


class RegionMeasure:
    """Measures of an encode by region (module docstring, step 2).

    ``original``: the image before the pre-filter (the person's DSSIM is measured against
    it), ``filtered``: the encoder input (the background's); their ``DssimReference``s are built
    at the first measure, with ``check`` (the deadline). Calling it gives the search's combined
    measure; ``regions(data)`` the per-region DSSIMs (the last encode's are kept, so the report
    costs no second measure)."""

    def __init__(
        self,
        original: pyvips.Image,
        filtered: pyvips.Image,
        weights: RegionWeights,
        region_plan: RegionPlan,
        *,
        check=None,
    ):
        # The person is where its probability is >= 0.5 (imagesvc.regions.masks.labels; the
        # pre-filter keeps exactly those pixels): the soft mask's low probabilities spread
        # over the background, which the pre-filter changed on purpose.
        person = person_region(weights).astype(np.float32)
        skin = np.clip(np.asarray(weights.skin, dtype=np.float32), 0.0, 1.0)
        self._images = (original, filtered)
        self._references = None
        self._check = check or (lambda: None)
        self.plan = region_plan
        self._person = person * (
            skin * region_plan.skin_weight + (1.0 - skin) * region_plan.clothes_weight
        )
        self._skin = person * skin
        self._clothes = person * (1.0 - skin)
        self._background = 1.0 - person
        self._last: tuple[bytes, dict[str, float]] | None = None

    @property
    def person_weights(self) -> np.ndarray:
        """The person's measure weights at the image's size (0 outside the person)."""
        return self._person

    @property
    def ceiling(self) -> float:
        return self.plan.target + self.plan.allowed_error

    def regions(self, data: bytes) -> dict[str, float]:
        """DSSIM of each region with pixels, by name (REGION_NAMES order)."""
        if self._last is not None and self._last[0] is data:
            return self._last[1]
        from imagesvc.encoding.dssim import DssimReference, decode, dssim_from_ssim

        if self._references is None:
            self._references = tuple(
                DssimReference(image, check=self._check) for image in self._images
            )
        original, filtered = self._references
        self._check()
        decoded = decode(data)
        person, skin, clothes = original.weighted_ssims(
            decoded, [self._person, self._skin, self._clothes]
        )
        (background,) = filtered.weighted_ssims(decoded, [self._background])
        values = {}
        for name, ssim in zip(REGION_NAMES, (person, skin, clothes, background), strict=True):
            if not math.isnan(ssim):
                values[name] = dssim_from_ssim(ssim)
        self._last = (data, values)
        return values

    def combined(self, values: dict[str, float]) -> float:
        person = values.get("person", 0.0)
        background = values.get("background", 0.0)
        return max(person, background * self.ceiling / self.plan.background_target)

    def meets(self, values: dict[str, float]) -> bool:
        return values.get("person", 0.0) <= self.ceiling and (
            values.get("background", 0.0) <= self.plan.background_target
        )

    def __call__(self, data: bytes) -> float:
        """``measure`` for ``search_quality``: meets target + allowed_error when both the
        person's and the background's targets are met."""
        return self.combined(self.regions(data))

    def dssim_of(self, data: bytes) -> float:
        """The person's DSSIM (what ``achieved_dssim`` reports)."""
        return self.regions(data).get("person", 0.0)


PREFILTER_BY_ENUM = {
    pb.BACKGROUND_FILTER_GAUSSIAN: "gaussian",
    pb.BACKGROUND_FILTER_MEDIAN: "median",
    pb.BACKGROUND_FILTER_CHROMA: "chroma",
    pb.BACKGROUND_FILTER_DEFOCUS: "defocus",
}
# Weights both at or under this are "effectively 0": no person pixel would count.
MIN_WEIGHT = 1e-6


def parse_regions(msg, method: str, violations) -> RegionSpec | None:
    """``OutputOptions.regions`` (a ``RegionQuality``) validated into a ``RegionSpec``; None
    when not enabled. ``method``: the autoquality method resolved (request, else settings);
    ``violations.add(path, message)`` collects the problems."""
    if not msg.enabled:
        return None
    path = "output.regions"
    ok = True

    def number(name: str, value: float) -> bool:
        if not math.isfinite(value):
            violations.add_not_finite(f"{path}.{name}")
            return False
        return True

    background = msg.background_target
    if not number("background_target", background):
        ok = False
    elif not 0 <= background < 1:
        violations.add(f"{path}.background_target", "must be within (0, 1), or 0: the default")
        ok = False
    weights = []
    for name in ("skin_weight", "clothes_weight"):
        value = getattr(msg, name)
        if not number(name, value):
            ok = False
        elif value < 0:
            violations.add(f"{path}.{name}", "must be >= 0 (0: 1)")
            ok = False
        weights.append(value or 1.0)
    if ok and max(weights) <= MIN_WEIGHT:
        violations.add(f"{path}", "skin_weight and clothes_weight cannot both be effectively 0")
        ok = False
    prefilter = None
    if msg.prefilter:
        prefilter = PREFILTER_BY_ENUM.get(msg.prefilter)
        if prefilter is None:
            violations.add(f"{path}.prefilter", f"unknown background filter {msg.prefilter}")
            ok = False
    sigma = msg.prefilter_sigma
    if not number("prefilter_sigma", sigma):
        ok = False
    elif sigma < 0:
        violations.add(f"{path}.prefilter_sigma", "must be >= 0 (0: automatic)")
        ok = False
    if method not in ("dssim", "ml"):
        violations.add(path, "needs the dssim or ml autoquality method")
        ok = False
    if not ok:
        return None
    return RegionSpec(
        background_target=background or None,
        skin_weight=weights[0],
        clothes_weight=weights[1],
        prefilter=prefilter,
        prefilter_sigma=sigma or None,
    )
