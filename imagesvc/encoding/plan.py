"""What encoding a result will cost, before anything is decoded: how many encodes of which
format at which relative cost, for the request planner (`imagesvc.planning`). Upper bounds:
every search is counted at its cap, every best-format candidate at the lossy arm's cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imagesvc.encoding.sample import MAX_SHARE
from imagesvc.encoding.search import MAX_ENCODES, MAX_ESTIMATES
from imagesvc.encoding.spec import QUALITY_FORMATS, EncodingSpec

BEST = "best"
# AVIF encode CPU relative to effort 2 (the planner's ENCODE_NS), measured on 1024x1024 with
# pyvips-binary's libheif/aom (effort 0: 0.057 s, 2: 0.285 s, 4: 1.89 s).
AVIF_EFFORT_COST = {
    0: 0.2,
    1: 0.5,
    2: 1.0,
    3: 2.5,
    4: 6.6,
    5: 10.0,
    6: 14.0,
    7: 20.0,
    8: 28.0,
    9: 40.0,
}
# Trial encodes of a search run at effort 0 (imagesvc.encoding.encoder.AVIF_SEARCH_EFFORT).
AVIF_TRIAL_EFFORT = 0
# Measuring one trial's DSSIM: decode the trial plus the SSIM maps, per pixel, on the
# reference machine (bench/README.md "Autoquality").
DSSIM_NS_PER_PX = 45.0
# What DssimReference holds for the image: its planes and window statistics.
DSSIM_BYTES_PER_PX = 60
# Region-aware autoquality (imagesvc.encoding.regions) holds two references (the original for
# the person, the pre-filtered input for the background), the masks and weight maps (six
# float32 planes) and the pre-filtered copy (a byte a band); the pre-filter itself (feathered
# mask, Gaussian, blend) took 157 ns a pixel on 1280x800 on the reference machine, and the
# defocus (the default; its blur on a reduced copy, in float) 1.37x the Gaussian's CPU.
REGION_BYTES_PER_PX = 2 * DSSIM_BYTES_PER_PX + 6 * 4 + 4
REGION_PREFILTER_NS_PER_PX = 220.0


@dataclass(frozen=True, slots=True)
class EncodeCost:
    format: str
    encodes: float  # in units of one encode at the planner's cost for the format
    measured: int  # trial results whose DSSIM is measured


def _searches(spec: EncodingSpec, fmt: str) -> bool:
    """Whether the quality of ``fmt`` is searched (several encodes) rather than fixed."""
    if fmt not in QUALITY_FORMATS:
        return False
    return spec.autoquality.method != "none" or spec.max_bytes > 0


def encode_costs(
    fmt: str, spec: EncodingSpec, has_alpha: bool, regions: bool = False
) -> list[EncodeCost]:
    """The encodes a result of format ``fmt`` (or "best") may take, at most. ``regions``:
    region-aware autoquality (every trial measured twice, person and background)."""
    formats = [fmt]
    if fmt == BEST:
        formats = list(dict.fromkeys([*spec.best_candidates, *(("png",) if has_alpha else ())]))
        # Synthetic images try the lossless arms too: lossless WebP and a quantized PNG.
        formats = list(dict.fromkeys([*formats, "png", "webp"]))
    out = []
    for name in formats:
        effort = AVIF_EFFORT_COST.get(spec.avif.effort, 1.0) if name == "avif" else 1.0
        if _searches(spec, name):
            trial = AVIF_EFFORT_COST[AVIF_TRIAL_EFFORT] if name == "avif" else 1.0
            dssim = spec.autoquality.method in ("dssim", "ml")
            # The cap of trials, then the final encode (at the requested effort for AVIF; for
            # the others the last trial is the result, counted once more as an upper bound).
            trials = MAX_ENCODES
            measured = MAX_ENCODES if dssim else 0
            if regions and dssim:
                # Every trial measured twice (person, background); the estimate's mosaic is
                # the person's tiles, at most MAX_SHARE of the pixels, measured once a call.
                measured = 2 * MAX_ENCODES + math.ceil(MAX_ESTIMATES * MAX_SHARE)
                trials += MAX_ESTIMATES * MAX_SHARE
            elif spec.autoquality.method != "none":
                # The cheap estimate's encodes (and measures) of a sample mosaic, each at most
                # MAX_SHARE of the pixels (imagesvc.encoding.sample).
                trials += MAX_ESTIMATES * MAX_SHARE
                measured += math.ceil(MAX_ESTIMATES * MAX_SHARE) if dssim else 0
            out.append(EncodeCost(name, trials * trial + effort, measured))
        else:
            out.append(EncodeCost(name, effort, 0))
    return out


def holds_copy(fmt: str, spec: EncodingSpec) -> bool:
    """Whether the encoder copies the result to memory (several encodes read it)."""
    return fmt == BEST or _searches(spec, fmt)
