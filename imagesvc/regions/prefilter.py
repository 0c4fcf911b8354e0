"""Background pre-filters: what the encoder gets in place of the background, so that it spends
fewer bits there (README "Region-aware compression").

Every filter is blended in through a feathered mask of the person: the person mask (>= 0.5) is
dilated by ``margin`` pixels and then blurred by ``margin / 2``, so the filtered background
fades in outside the person's edge (no halo of sharp background around the person, no blur
bleeding into it) and no pixel of the person changes (its weight is exactly 1). Filters, all libvips (killable by the request's deadline):

- ``gaussian``: a Gaussian blur of ``sigma``: removes texture and noise, the largest saving,
  visibly soft;
- ``median``: a median of a (2 sigma + 1)-px square: removes grain and fine texture, keeps
  edges;
- ``chroma``: luma unchanged, chroma blurred by 2 sigma: colour noise and detail cost the
  encoder bits and the eye sees little of them;
- ``defocus``: a lens-like defocus of the background alone (`defocused`): a Gaussian of
  ``sigma`` over the background's own pixels (a normalised convolution: the person's pixels
  get no weight), so no person colour spreads into it however strong the blur, and the feather
  can stay narrow. Computed at a reduced resolution (the blur removes what it drops).
"""

from __future__ import annotations

import numpy as np
import pyvips

FILTERS = ("gaussian", "median", "chroma", "defocus")
# ``defocused`` blurs a copy reduced by sigma / this (at least 1): the reduced copy keeps every
# frequency a Gaussian of sigma lets through (its cut-off is well under the copy's Nyquist).
DEFOCUS_SIGMA_PER_SHRINK = 4.0
# Where the background has (next to) no pixel within reach of the blur, the ratio's denominator
# is held at this weight: those pixels lie on the person, whose own pixels are kept anyway.
DEFOCUS_MIN_WEIGHT = 1e-3


def feathered_keep(person: np.ndarray, margin: float) -> pyvips.Image:
    """Weight of the original pixel, 0..1 float, one band: 1 on the person and within
    ``margin`` px of it, fading to 0 beyond."""
    hard = pyvips.Image.new_from_array(
        np.ascontiguousarray((person >= 0.5).astype(np.uint8) * 255)
    ).cast("uchar")
    radius = max(1, int(round(margin)))
    size = 2 * radius + 1
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = np.where(xx * xx + yy * yy <= radius * radius, 255, 128).astype(np.float64)
    dilated = hard.morph(pyvips.Image.new_from_array(disc.reshape(size, size).tolist()), "dilate")
    soft = (dilated.gaussblur(max(0.5, margin / 2), precision="float") / 255.0).cast("float")
    # The blur leaves ~0.98 at the person's edge (2 sigma inside the dilated edge): the person
    # itself is held at exactly 1.
    return hard.ifthenelse(1.0, soft)


def defocused(image: pyvips.Image, person: np.ndarray, sigma: float) -> pyvips.Image:
    """The background of ``image`` (no alpha; any band count and sample format) blurred by a
    Gaussian of ``sigma`` over its own pixels: at each pixel, the background pixels' Gaussian
    weighted mean, the person's (probability >= 0.5) left out. Float, the image's size; on the
    person it is the nearby background's colour (the caller keeps the person's own pixels)."""
    if person.shape != (image.height, image.width):
        raise ValueError(f"mask is {person.shape}, the image {image.height}x{image.width}")
    background = pyvips.Image.new_from_array(
        np.ascontiguousarray((person < 0.5).astype(np.float32))
    )
    shrink = max(1.0, sigma / DEFOCUS_SIGMA_PER_SHRINK)
    width = max(1, round(image.width / shrink))
    height = max(1, round(image.height / shrink))
    # Weighted pixels and weights are reduced apart (the person's pixels weigh 0 in both), so
    # a reduced pixel straddling the person's edge carries none of its colour.
    weighted, weight = image.cast("float") * background, background
    if (width, height) != (image.width, image.height):
        sx, sy = width / image.width, height / image.height
        weighted = weighted.resize(sx, vscale=sy, kernel="linear")
        weight = weight.resize(sx, vscale=sy, kernel="linear")
    small_sigma = max(0.5, sigma * width / image.width)
    total = weighted.gaussblur(small_sigma, precision="float")
    reach = weight.gaussblur(small_sigma, precision="float")
    reach = (reach < DEFOCUS_MIN_WEIGHT).ifthenelse(DEFOCUS_MIN_WEIGHT, reach)
    smooth = total / reach
    if (smooth.width, smooth.height) != (image.width, image.height):
        smooth = smooth.resize(
            image.width / smooth.width, vscale=image.height / smooth.height, kernel="linear"
        )
        # Rounding in resize can leave a pixel more or less at an edge.
        smooth = smooth.embed(0, 0, image.width, image.height, extend="copy")
    return smooth


def filtered(image: pyvips.Image, method: str, sigma: float) -> pyvips.Image:
    """The whole image filtered by ``method`` (see FILTERS; not ``defocus``, which needs the
    person: `defocused`)."""
    if method == "gaussian":
        return image.gaussblur(sigma).cast(image.format)
    if method == "median":
        size = 2 * max(1, int(round(sigma))) + 1
        # libvips' rank refuses a window larger than the image: the largest odd one that fits.
        fits = min(image.width, image.height)
        size = min(size, fits if fits % 2 else fits - 1)
        if size <= 1:
            return image
        return image.median(size).cast(image.format)
    if method == "chroma":
        space = image.colourspace("lab")
        luma = space[0]
        chroma = space.extract_band(1, n=2).gaussblur(2 * sigma)
        return luma.bandjoin(chroma).colourspace("srgb").cast(image.format)
    raise ValueError(f"unknown background filter {method!r}; known: {FILTERS}")


def prefilter(
    image: pyvips.Image, person: np.ndarray, method: str, sigma: float, margin: float
) -> pyvips.Image:
    """``image`` (uchar, 3 or 4 bands, alpha kept as it is) with its background replaced by
    its ``method`` filtered version, blended through `feathered_keep`."""
    if person.shape != (image.height, image.width):
        raise ValueError(f"mask is {person.shape}, the image {image.height}x{image.width}")
    alpha = None
    colour = image
    if image.hasalpha():
        colour, alpha = image.extract_band(0, n=image.bands - 1), image[image.bands - 1]
    keep = feathered_keep(person, margin)
    if method == "defocus":
        smooth = defocused(colour, person, sigma)
    else:
        smooth = filtered(colour, method, sigma)
    blended = (colour.cast("float") * keep + smooth.cast("float") * (1.0 - keep)).cast(
        colour.format
    )
    if alpha is not None:
        blended = blended.bandjoin(alpha)
    return blended.copy(interpretation=image.interpretation)
