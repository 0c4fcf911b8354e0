"""Autoquality's cheap estimate: a mosaic of tiles sampled across the image, encoded at full
resolution (README "Autoquality search"; ``search.search_quality``'s ``estimate``).

The mosaic is ``across x down`` tiles of ``TILE`` pixels taken at evenly spaced places and
joined edge to edge: 8 x 8 tiles (256 x 256) at most, fewer where that would be over a
quarter of the image's pixels (an eighth of a 720 x 720 image, a fifth of 720 x 479). Images
with room for fewer than 6 x 6 tiles (under ~384 x 384) are not sampled: the estimate would be
noisy and their encodes are cheap anyway. Encoded at a quality, the mosaic predicts the whole
image's encode at that quality:

* bytes: the mosaic's payload over its share of the pixels, plus the container's and the
  metadata's fixed bytes (an 8 x 8 corner of the image, its metadata kept, encoded once at the
  first quality asked, stands for them: they are not scaled up);
* DSSIM: the mosaic's own DSSIM (its reference built once), with the windows that straddle a
  seam between tiles left out (weight 0 within ``SEAM`` pixels of one: the seams are edges the
  image does not have).

Tiles keep the image's resolution: a downscaled copy has denser detail (in the photo corpus
its bytes per pixel were 40-60 % higher at the same quality, and its DSSIM crossed the target
10-30 qualities away). With 64 tiles the estimate was within 3-15 % of the image's bytes and
DSSIM, its mean bias by format (JPEG bytes -3 %, WebP -10 %, AVIF -8 to -20 %; DSSIM within a
few %) learned by ``GuessHistory``; fewer, bigger tiles (16 of 64 px) were noisier.

Cost: an encode of about ``share`` of the pixels plus a fixed part (libvips' call, the codec's
set-up: a 256 x 256 JPEG took ~0.9 ms against 3-5 ms for 720 x 720), and for DSSIM its
measure; ``bench/autoquality.py`` measures it in CPU time against the full trials.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import pyvips

TILE = 32  # a multiple of JPEG's 16-px MCU and WebP's macroblock
GRID = 8  # tiles per side at most
MIN_GRID = 6  # fewer tiles: a noisy estimate of a small image, whose encodes are cheap anyway
MAX_SHARE = 1 / 4  # the mosaic's pixels over the image's, at most
SEAM = 3  # DSSIM's 7x7 window reaches this far: windows across a seam are left out
CORNER = 8  # the corner encoded for the fixed bytes


class Mosaic:
    """A sample mosaic: ``image`` (in memory), ``share`` (its pixels over the image's: an
    encode of it costs about this many encodes of the image), ``tiles``; ``weights()`` and
    ``corner()`` are made when asked (DSSIM needs the one, sizes the other)."""

    __slots__ = ("image", "share", "tiles", "tile", "_source", "_pixel_weights")

    def __init__(
        self,
        image: pyvips.Image,
        share: float,
        tiles: int,
        source: pyvips.Image,
        pixel_weights: np.ndarray | None = None,
    ):
        self.image, self.share, self.tiles, self.tile = image, share, tiles, TILE
        self._source = source
        # The measure's own weights, tiled like the image (a region mosaic's); None: all 1.
        self._pixel_weights = pixel_weights

    def weights(self) -> np.ndarray:
        """For ``DssimReference.dssim``: 0 within SEAM px of a seam between tiles, else 1 (or
        the measure's own weight of the pixel, for a region mosaic)."""
        width, height = self.image.width, self.image.height
        weights = np.ones((height, width), dtype=np.float32)
        if self._pixel_weights is not None:
            weights *= self._pixel_weights
        for k in range(TILE, width, TILE):
            weights[:, k - SEAM : k + SEAM] = 0
        for k in range(TILE, height, TILE):
            weights[k - SEAM : k + SEAM, :] = 0
        return weights

    def corner(self) -> pyvips.Image:
        """CORNER x CORNER of the image, its metadata kept: what stands for the fixed bytes."""
        source = self._source
        return source.crop(0, 0, min(CORNER, source.width), min(CORNER, source.height))

    def metadata(self) -> tuple[tuple[str, int], ...]:
        """The image's metadata blobs (ICC, EXIF, XMP, IPTC), by name and length."""
        source = self._source
        return tuple(
            (name, len(source.get(name)))
            for name in sorted(source.get_fields())
            if name.endswith("-data")
        )


# Fixed bytes by (the caller's key for the encoder's settings, the metadata's sizes): the
# corner's encode is made once per such key (a few hundred bytes of headers, within ~50 bytes
# whatever the image and the quality). Bounded, least recently used dropped.
_FIXED: OrderedDict[Hashable, int] = OrderedDict()
_FIXED_LOCK = threading.Lock()
FIXED_KEYS = 256


def grid_for(width: int, height: int) -> tuple[int, int] | None:
    """(tiles across, tiles down), or None when the image is too small to sample."""
    n = min(GRID, math.isqrt(int(width * height * MAX_SHARE)) // TILE)
    across, down = min(n, width // TILE), min(n, height // TILE)
    if across * down < MIN_GRID * MIN_GRID:
        return None
    return across, down


def _places(length: int, count: int) -> list[int]:
    return [round(i * (length - TILE) / (count - 1)) if count > 1 else 0 for i in range(count)]


def mosaic(image: pyvips.Image) -> Mosaic | None:
    """The image's sample mosaic (module docstring), or None for a small image."""
    width, height = image.width, image.height
    grid = grid_for(width, height)
    if grid is None:
        return None
    across, down = grid
    xs, ys = _places(width, across), _places(height, down)
    # numpy slices of the image's pixels (libvips' arrayjoin of 64 crops took ~5x longer).
    pixels = image.numpy()
    tiles = np.concatenate(
        [np.concatenate([pixels[y : y + TILE, x : x + TILE] for x in xs], axis=1) for y in ys],
        axis=0,
    )
    joined = pyvips.Image.new_from_array(
        np.ascontiguousarray(tiles), interpretation=image.interpretation
    )
    # The image's metadata blobs too (ICC, EXIF, XMP, IPTC), so that the mosaic's encode
    # carries the same fixed bytes as the image's and the corner's.
    for name in image.get_fields():
        if name.endswith("-data"):
            joined.set_type(pyvips.GValue.blob_type, name, image.get(name))
    share = across * down * TILE * TILE / (width * height)
    return Mosaic(joined, share, across * down, image)


# A tile belongs to the region when this share of its pixels has weight (region mosaics).
REGION_TILE_COVER = 0.75


def region_mosaic(image: pyvips.Image, weights: np.ndarray) -> Mosaic | None:
    """A mosaic of the tiles that lie in a region (region-aware autoquality: the person), for
    estimating the region's DSSIM: ``weights`` (H x W, the measure's weights, 0 outside the
    region) picks the tiles (REGION_TILE_COVER of their pixels inside) and weighs the mosaic's
    measure. Up to GRID x GRID of them, evenly spread over the region's tiles, within MAX_SHARE
    of the pixels; None when the region has fewer than MIN_GRID x MIN_GRID tiles."""
    width, height = image.width, image.height
    cols, rows = width // TILE, height // TILE
    if cols == 0 or rows == 0 or weights.shape != (height, width):
        return None
    grid = np.asarray(weights[: rows * TILE, : cols * TILE], dtype=np.float32)
    blocks = grid.reshape(rows, TILE, cols, TILE)
    cover = (blocks > 0).mean(axis=(1, 3))
    places = np.argwhere(cover >= REGION_TILE_COVER)  # (row, col), row-major
    most = min(GRID * GRID, int(width * height * MAX_SHARE) // (TILE * TILE))
    side = math.isqrt(min(len(places), most))
    if side < MIN_GRID:
        return None
    chosen = places[np.round(np.linspace(0, len(places) - 1, side * side)).astype(int)]
    pixels = image.numpy()
    if pixels.ndim == 2:
        pixels = pixels[..., None]

    def tile(array: np.ndarray, row: int, col: int) -> np.ndarray:
        return array[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]

    def joined(array: np.ndarray) -> np.ndarray:
        lines = [
            np.concatenate([tile(array, *chosen[i * side + j]) for j in range(side)], axis=1)
            for i in range(side)
        ]
        return np.ascontiguousarray(np.concatenate(lines, axis=0))

    mosaic_image = pyvips.Image.new_from_array(joined(pixels), interpretation=image.interpretation)
    for name in image.get_fields():
        if name.endswith("-data"):
            mosaic_image.set_type(pyvips.GValue.blob_type, name, image.get(name))
    share = side * side * TILE * TILE / (width * height)
    return Mosaic(mosaic_image, share, side * side, image, joined(grid))


class Estimator:
    """``estimate`` for ``search.search_quality``: quality -> the measure predicted for the
    whole image from the mosaic's encode (module docstring). ``encode(image, quality)`` is the
    search's trial encoder applied to another image; ``kind`` "size" or "dssim". ``calls``
    counts the mosaic's encodes (the corner's, a few hundred bytes, is not counted)."""

    def __init__(
        self,
        sample: Mosaic,
        kind: str,
        encode: Callable[[pyvips.Image, int], bytes],
        *,
        check: Callable[[], None] | None = None,
        fixed_key: Hashable | None = None,
    ):
        self.sample = sample
        self.fixed_key = fixed_key
        self.kind = kind
        self.encode = encode
        self.check = check or (lambda: None)
        self.calls = 0
        self._fixed: int | None = None
        self._reference = self._weights = None
        if kind == "dssim":
            from imagesvc.encoding.dssim import DssimReference

            self._reference = DssimReference(sample.image, check=check)
            self._weights = sample.weights()

    @property
    def cost(self) -> float:
        """One call's cost in encodes of the whole image (its share of the pixels)."""
        return self.sample.share

    def __call__(self, quality: int) -> float:
        self.check()
        self.calls += 1
        data = self.encode(self.sample.image, quality)
        if self._reference is not None:
            return self._reference.dssim_of(data, self._weights)
        if self._fixed is None:
            self._fixed = min(self._fixed_bytes(quality), len(data))
        return (len(data) - self._fixed) / self.sample.share + self._fixed

    def _fixed_bytes(self, quality: int) -> int:
        key = None
        if self.fixed_key is not None:
            key = (self.fixed_key, self.sample.metadata())
            with _FIXED_LOCK:
                if key in _FIXED:
                    _FIXED.move_to_end(key)
                    return _FIXED[key]
        fixed = len(self.encode(self.sample.corner(), quality))
        if key is not None:
            with _FIXED_LOCK:
                _FIXED[key] = fixed
                while len(_FIXED) > FIXED_KEYS:
                    _FIXED.popitem(last=False)
        return fixed


def estimator(
    image: pyvips.Image,
    kind: str,
    encode: Callable[[pyvips.Image, int], bytes],
    *,
    check: Callable[[], None] | None = None,
    fixed_key: Hashable | None = None,
    region: np.ndarray | None = None,
) -> Estimator | None:
    """The image's estimator (None when it is too small to sample). ``fixed_key``: hashable,
    the same for encodes that write the same headers (format, options, metadata kept): the
    fixed bytes are then measured once per key and metadata sizes. ``region``: the DSSIM
    measure's weights (region-aware autoquality's person): the mosaic is the region's tiles
    (`region_mosaic`) and estimates the region's DSSIM."""
    sample = mosaic(image) if region is None else region_mosaic(image, region)
    if sample is None:
        return None
    return Estimator(sample, kind, encode, check=check, fixed_key=fixed_key)
