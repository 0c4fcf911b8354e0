"""IMAGE_FORMAT_BEST (imgproxy Pro ``format:best``): a measured complexity decides between the
lossless family (synthetic images: few colours, flat areas, sharp edges) and the lossy one
(photographs); every candidate of that family is encoded and the smallest wins (README "Output
encoding" > "Best format").

**Complexity** is the bits per pixel a lossless coder spends on the sample outside the image's
dominant flat colours. The sample: twelve stripes of eight full rows (at most 1024 px wide,
centred), spread evenly down the image (an image of 96 rows or fewer is taken whole), at most
~98k pixels whatever the image size. On it:

- ``bits_per_pixel``: the cheaper of two lossless codings, the MED (LOCO-I / JPEG-LS)
  prediction residuals of each band deflated (zlib level 1: exact on gradients and flat
  areas), and WebP lossless at effort 0 on the stripes stacked (its 2-D back-references and
  colour cache see repeated glyphs: a text page 0.44 instead of 1.67);
- ``dominant_share``: the share of the sample's pixels in its 4 commonest colours (a flat
  background and a few fills: 0.9-1.0 for screenshots, charts, logos; under 0.35 for photos);
- ``value`` = bits_per_pixel x (1 - dominant_share).

Below ``COMPLEXITY_THRESHOLD`` (0.2) the image is synthetic. Measured on 37 images
(screenshots, charts, logos, pixel art, a text page, gradients, scans, photographs, noise;
figures in the README), the synthetic ones measured at most 0.146 (a smooth gradient; the
rest under 0.06), the lowest of the others 0.31 (a JPEG-coded screenshot, whose lossless
WebP was 2.6x its smallest lossy encode), then 1.09 (the moon: black sky) and 1.13 (a
screenshot with a photograph inset). ``complexity`` took 5-16 ms per image on the development
VM (about 20 ms for 18 MP: the sample's size is bounded).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyvips

COMPLEXITY_THRESHOLD = 0.2  # below: lossless / near-lossless candidates (module docstring)
DOMINANT_COLORS = 4
STRIPES = 12
STRIPE_ROWS = 8
MAX_SAMPLE_WIDTH = 1024
PALETTE_LIMIT = 256  # the sample's distinct colours at most this: PNG is quantized
# WebP's near-lossless preprocessing level (libwebp 0..100, 100 = off; 60 is cwebp's default).
NEAR_LOSSLESS_LEVEL = 60


@dataclass(frozen=True, slots=True)
class Complexity:
    value: float  # bits_per_pixel x (1 - dominant_share): the measure compared to the threshold
    bits_per_pixel: float  # the cheaper lossless coding of the sample
    dominant_share: float  # share of the sample's pixels in its DOMINANT_COLORS commonest colours
    sample_colors: int  # distinct colours in the sample

    @property
    def synthetic(self) -> bool:
        return self.value < COMPLEXITY_THRESHOLD


@dataclass(frozen=True, slots=True)
class Candidate:
    """One encode best format tries: a format and its mode (quality comes from autoquality)."""

    format: str
    lossless: bool = False
    near_lossless: bool = False
    palette_colors: int | None = None  # png: quantized to at most this many colours


def sample(image: pyvips.Image) -> list[pyvips.Image]:
    """Stripes of full rows spread down the image (see the module docstring)."""
    width = min(image.width, MAX_SAMPLE_WIDTH)
    left = (image.width - width) // 2
    if image.height <= STRIPES * STRIPE_ROWS:
        return [image.crop(left, 0, width, image.height)]
    step = image.height - STRIPE_ROWS
    return [image.crop(left, step * i // (STRIPES - 1), width, STRIPE_ROWS) for i in range(STRIPES)]


def _flattened(image: pyvips.Image) -> pyvips.Image:
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _med_bits(pixels: np.ndarray) -> tuple[int, int]:
    """Deflated bits of the MED prediction residuals of an HxWxB uint8 array, and pixels."""
    a = pixels.astype(np.int16)
    if a.shape[0] < 2 or a.shape[1] < 2:
        return len(zlib.compress(pixels.tobytes(), 1)) * 8, max(1, a.shape[0] * a.shape[1])
    left, up, corner, here = a[1:, :-1], a[:-1, 1:], a[:-1, :-1], a[1:, 1:]
    high = np.maximum(left, up)
    low = np.minimum(left, up)
    predicted = np.where(corner >= high, low, np.where(corner <= low, high, left + up - corner))
    residual = ((here - predicted) & 255).astype(np.uint8)
    return len(zlib.compress(residual.tobytes(), 1)) * 8, residual.shape[0] * residual.shape[1]


def _pixels(part: pyvips.Image) -> np.ndarray:
    array = part.numpy()
    return array[:, :, None] if array.ndim == 2 else array


def complexity(image: pyvips.Image) -> Complexity:
    """The image's measured complexity (module docstring). ``image`` should be in memory (or
    cheap to read twice): the sample reads a few rows of it."""
    parts = [part.copy_memory() for part in sample(_flattened(image))]
    arrays = [_pixels(part) for part in parts]
    bits = pixels = 0
    for array in arrays:
        b, p = _med_bits(array)
        bits += b
        pixels += p
    med = bits / max(pixels, 1)
    stacked = pyvips.Image.arrayjoin(parts, across=1) if len(parts) > 1 else parts[0]
    webp = len(stacked.webpsave_buffer(lossless=True, effort=0, keep="none")) * 8
    bpp = min(med, webp / (stacked.width * stacked.height))
    counts = _colour_counts(arrays)
    dominant = float(np.sort(counts)[::-1][:DOMINANT_COLORS].sum() / counts.sum())
    return Complexity(bpp * (1.0 - dominant), bpp, dominant, int(len(counts)))


def _colour_counts(arrays: list[np.ndarray]) -> np.ndarray:
    """How many pixels of the sample have each of its distinct colours."""
    flat = np.concatenate([a.reshape(-1, a.shape[2]) for a in arrays])
    key = np.zeros(len(flat), dtype=np.uint32)
    for band in range(flat.shape[1]):
        key = (key << np.uint32(8)) | flat[:, band].astype(np.uint32)
    return np.unique(key, return_counts=True)[1]


def candidates(
    formats: tuple[str, ...], has_alpha: bool, measured: Complexity | None
) -> list[Candidate]:
    """What best format encodes. ``formats``: the request's (or the setting's) candidates;
    png joins them for images with alpha. ``measured`` None: not measured (lossy family).

    Synthetic images get the lossless family of the candidates: PNG (quantized to 256 colours
    when the sample holds at most 256: exact when the image does too), lossless and
    near-lossless WebP; JPEG and AVIF are left out (no lossless mode worth its CPU here). With
    neither png nor webp among the candidates the lossy family is used. Photographs get the
    lossy candidates (PNG, when a candidate, lossless).
    """
    names = list(dict.fromkeys(formats))
    if has_alpha and "png" not in names:
        names.append("png")
    if measured is not None and measured.synthetic and ("png" in names or "webp" in names):
        out: list[Candidate] = []
        palette = PALETTE_LIMIT if measured.sample_colors <= PALETTE_LIMIT else None
        if "png" in names:
            out.append(Candidate("png", lossless=True, palette_colors=palette))
        if "webp" in names:
            out.append(Candidate("webp", lossless=True))
            out.append(Candidate("webp", near_lossless=True))
        return out
    return [Candidate(name, lossless=name == "png") for name in names]
