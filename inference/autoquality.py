"""Autoquality by ML: the image features the quality model reads, and the maths that turns its
predicted curves into a quality (README of ``inference/training/autoquality/``).

The model (``model_repository/autoquality``) predicts, per format, the whole quality -> DSSIM
curve of an image: ``log(DSSIM)`` at every quality of a fixed grid (``curve.json`` beside the
model names the formats and the grid), DSSIM being the service's own
(`imagesvc.encoding.dssim`). A curve serves any target without retraining:

1. ``features(image)``: a small vector of image statistics at output size (libvips decodes,
   numpy measures; a few milliseconds for 720 px), the model's only input.
2. The model (one Triton call, a batch of any formats) -> ``log_dssim`` [formats, grid].
3. ``quality_for(grid, log_dssim, target)``: where the curve reaches the target (monotone
   interpolation in (quality, log DSSIM); the curve is made non-increasing first).
4. After one encode at that quality, its measured DSSIM ``d`` corrects the curve:
   ``shift_through(grid, log_dssim, q, d)`` moves it in log space through ``(q, d)`` and
   ``quality_for`` inverts it again (not a search from scratch).

Everything here is numpy only (pyvips is imported by ``features`` alone), so the training
scripts, the tests and the service import it without Triton.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The feature vector, in order (FEATURE_NAMES[i] is input element i). Changing it changes the
# model's input: bump FEATURES_VERSION and retrain (curve.json records the version trained).
FEATURES_VERSION = 2
FEATURE_NAMES: tuple[str, ...] = (
    "log_pixels",  # log(width * height)
    "log_min_side",  # log(min(width, height))
    "grey",  # 1 for a one-band image
    "luma_mean",  # Y' mean / 255
    "luma_std",  # Y' standard deviation / 255
    "dark_share",  # share of pixels with Y' < 16
    "bright_share",  # share of pixels with Y' > 239
    "log_grad_abs",  # log(1 + mean |dY/dx| + |dY/dy|)
    "log_grad_sq",  # log(1 + mean (dY/dx)^2 + (dY/dy)^2)
    "edge_share",  # share of pixels with |dY/dx| + |dY/dy| > 24
    "smooth_share",  # share with 0 < |dY/dx| + |dY/dy| <= 3 (gentle gradients: banding risk)
    "still_share",  # share with dY/dx = dY/dy = 0 (exactly flat)
    "log_lap1",  # log(1 + mean |Laplacian(Y')|) at full size
    "log_lap2",  # ... at 1/2 size (2x2 means)
    "log_lap4",  # ... at 1/4 size
    "log_noise",  # log(1 + Immerkaer's noise sigma of Y')
    "log_block_var_mean",  # over the 8x8 blocks of Y': mean of log(1 + variance)
    "log_block_var_std",  # ... standard deviation of log(1 + variance)
    "log_block_var_p10",  # ... 10th percentile
    "log_block_var_p50",  # ... median
    "log_block_var_p90",  # ... 90th percentile
    "flat1_share",  # share of 8x8 blocks with standard deviation < 1
    "flat3_share",  # ... < 3
    "flat8_share",  # ... < 8
    "log_chroma_std",  # log(1 + std of Cb + std of Cr)
    "log_chroma_sat",  # log(1 + mean sqrt(Cb^2 + Cr^2))
    "log_chroma_grad",  # log(1 + mean |dCb| + |dCr| along x and y)
    "log_chroma_lap",  # log(1 + mean |Laplacian(Cb)| + |Laplacian(Cr)|)
    "chroma_luma_grad",  # log((1 + chroma gradient) / (1 + luma gradient))
    # Simulated quantization (see _quantization_dssim): log of the DSSIM an SSIM model
    # predicts for the regions' 8x8 DCT blocks quantized with libjpeg's tables at JPEG
    # quality 30/50/70 (4:2:0 chroma) and 90 (4:4:4), ...
    "log_qdssim_jpeg30",
    "log_qdssim_jpeg50",
    "log_qdssim_jpeg70",
    "log_qdssim_jpeg90",
    # ... and for 4x4 luma DCT blocks (WebP's and AV1's smallest transform) quantized with a
    # flat step of 4, 10 and 25.
    "log_qdssim_4x4_s4",
    "log_qdssim_4x4_s10",
    "log_qdssim_4x4_s25",
)
N_FEATURES = len(FEATURE_NAMES)

# Images over this many pixels are measured on a grid of TILE x TILE tiles at output
# resolution (high-frequency statistics must be read at the size that is encoded), so the cost
# stays that of a ~100k-pixel image: a few ms (inference/training/autoquality/README.md).
TILE = 64
MAX_FEATURE_PIXELS = 16 * TILE * TILE
# The tiles are read as whole rows of them when those rows hold at most this many bytes (a
# 1920 px wide image: 4 rows, 1.5 MB), else tile by tile.
MAX_STRIP_BYTES = 8 << 20
LOG_DSSIM_FLOOR = math.log(1e-6)  # DSSIM below 1e-6 is noise (identical within rounding)

# Full-range BT.601 R'G'B' -> Y'CbCr (as imagesvc.encoding.dssim), chroma centred on 0.
_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.299 / 1.772, -0.587 / 1.772, 0.886 / 1.772],
        [0.701 / 1.402, -0.587 / 1.402, -0.114 / 1.402],
    ],
    dtype=np.float32,
)


# --- features -------------------------------------------------------------------------------


def features(image) -> np.ndarray:
    """The model's input for a ``pyvips.Image`` as the encoder gets it (8-bit sRGB or grey,
    alpha flattened: `imagesvc.encoding.savers.prepare`'s output), at output size.

    float32 [N_FEATURES], in FEATURE_NAMES order. A large image is read only where its tiles
    are (libvips cuts and joins them, then one copy to numpy)."""
    import pyvips

    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.format != "uchar" or image.bands not in (1, 3):
        image = image.colourspace("b-w" if image.bands < 3 else "srgb").cast("uchar")
    width, height = image.width, image.height
    origins = _tile_origins(height, width)
    if origins is None:
        return features_of_pixels(image.numpy(), width, height)
    ys = sorted({y for y, _ in origins})
    xs = sorted({x for _, x in origins})
    left, span = xs[0], xs[-1] + TILE - xs[0]
    if len(ys) * TILE * span * image.bands <= MAX_STRIP_BYTES:
        # One strip per row of tiles (a few libvips calls, not two per tile: ~2 ms less at
        # 16 tiles), the tiles cut from it in numpy. Same pixels, same order as below.
        strips = [image.crop(left, y, span, TILE) for y in ys]
        joined = pyvips.Image.arrayjoin(strips, across=1).numpy()
        if joined.ndim == 2:
            joined = joined[:, :, None]
        regions = np.stack(
            [
                joined[row * TILE : (row + 1) * TILE, x - left : x - left + TILE]
                for row in range(len(ys))
                for x in xs
            ]
        )
    else:
        tiles = [image.crop(x, y, TILE, TILE) for y, x in origins]
        joined = pyvips.Image.arrayjoin(tiles, across=len(tiles)).numpy()
        if joined.ndim == 2:
            joined = joined[:, :, None]
        regions = joined.reshape(TILE, len(tiles), TILE, -1).transpose(1, 0, 2, 3)
    return _vector(regions, width, height)


def features_of_pixels(pixels: np.ndarray, width: int | None = None, height: int | None = None):
    """``features`` of a uint8 array, (H, W), (H, W, 1) or (H, W, 3). ``width``/``height``
    default to the array's (pass the full image's when ``pixels`` is already a crop)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"features need uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"features need (H, W), (H, W, 1) or (H, W, 3), got {pixels.shape}")
    h, w = pixels.shape[:2]
    width = w if width is None else int(width)
    height = h if height is None else int(height)
    return _vector(_regions(pixels), width, height)


def _vector(regions: np.ndarray, width: int, height: int) -> np.ndarray:
    n, h, w, bands = regions.shape
    if h < 16 or w < 16:
        raise ValueError(f"features need an image of at least 16x16 px, got {w}x{h}")
    if regions.dtype != np.uint8 or bands not in (1, 3):
        raise ValueError("features need uint8 pixels with 1 or 3 bands")
    stats = _measure(regions, bands)
    out = np.zeros(N_FEATURES, dtype=np.float64)
    out[0] = math.log(width * height)
    out[1] = math.log(min(width, height))
    out[2] = 1.0 if bands == 1 else 0.0
    for index, name in enumerate(FEATURE_NAMES[3:], start=3):
        out[index] = stats[name]
    return out.astype(np.float32)


def _tile_origins(h: int, w: int) -> list[tuple[int, int]] | None:
    """(y, x) of the TILE x TILE tiles measured in an image of h x w px, on a regular grid
    (8-px aligned, as JPEG's blocks) holding about MAX_FEATURE_PIXELS; None when the image
    is small enough to be measured whole."""
    if h * w <= MAX_FEATURE_PIXELS or h < TILE or w < TILE:
        return None
    count = MAX_FEATURE_PIXELS // (TILE * TILE)
    rows = min(max(1, round(math.sqrt(count * h / w))), max(1, h // TILE))
    cols = min(max(1, count // rows), max(1, w // TILE))
    ys = np.linspace(0, h - TILE, rows).astype(int) // 8 * 8
    xs = np.linspace(0, w - TILE, cols).astype(int) // 8 * 8
    return [(int(y), int(x)) for y in ys for x in xs]


def _regions(pixels: np.ndarray) -> np.ndarray:
    """The pixels measured, (N, h, w, C): the whole image (N = 1) when it holds at most
    MAX_FEATURE_PIXELS, else N tiles of TILE x TILE (`_tile_origins`): the statistics are
    read at output resolution (where the encoder works) at a cost that does not grow with
    the image."""
    origins = _tile_origins(*pixels.shape[:2])
    if origins is None:
        return pixels[None]
    return np.stack([pixels[y : y + TILE, x : x + TILE] for y, x in origins])


def _lap_abs_mean(p: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| over (N, h, w) planes."""
    if p.shape[1] < 3 or p.shape[2] < 3:
        return 0.0
    c = p[:, 1:-1, 1:-1]
    lap = 4.0 * c - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def _half(p: np.ndarray) -> np.ndarray:
    """(N, h, w) planes at half size (2x2 means)."""
    h, w = p.shape[1] // 2 * 2, p.shape[2] // 2 * 2
    p = p[:, :h, :w]
    return 0.25 * (p[:, 0::2, 0::2] + p[:, 1::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 1::2])


def _grad_abs_mean(p: np.ndarray) -> float:
    return float(np.abs(p[:, :, 1:] - p[:, :, :-1]).mean() + np.abs(p[:, 1:] - p[:, :-1]).mean())


def _measure(regions: np.ndarray, bands: int) -> dict[str, float]:
    """The statistics of FEATURE_NAMES[3:] over (N, h, w, C) uint8 regions."""
    n, h, w = regions.shape[:3]
    if bands == 3:
        ycc = np.tensordot(regions.astype(np.float32), _YCBCR, axes=([3], [1]))
        y = ycc[..., 0]
        cb, cr = ycc[..., 1], ycc[..., 2]
    else:
        y = regions[..., 0].astype(np.float32)
        cb = cr = None
    s: dict[str, float] = {}
    mean = float(y.mean())
    s["luma_mean"] = mean / 255.0
    s["luma_std"] = math.sqrt(max(float(np.square(y).mean()) - mean * mean, 0.0)) / 255.0
    s["dark_share"] = float(np.count_nonzero(y < 16)) / y.size
    s["bright_share"] = float(np.count_nonzero(y > 239)) / y.size
    dx = np.abs(y[:, :-1, 1:] - y[:, :-1, :-1])
    dy = np.abs(y[:, 1:, :-1] - y[:, :-1, :-1])
    grad = dx + dy
    grad_mean = float(grad.mean())
    s["log_grad_abs"] = math.log1p(grad_mean)
    np.square(dx, out=dx)
    np.square(dy, out=dy)
    s["log_grad_sq"] = math.log1p(float(dx.mean()) + float(dy.mean()))
    s["edge_share"] = float(np.count_nonzero(grad > 24)) / grad.size
    still = np.count_nonzero(grad == 0)
    s["smooth_share"] = float(np.count_nonzero(grad <= 3) - still) / grad.size
    s["still_share"] = float(still) / grad.size
    y2 = _half(y)
    s["log_lap1"] = math.log1p(_lap_abs_mean(y))
    s["log_lap2"] = math.log1p(_lap_abs_mean(y2))
    s["log_lap4"] = math.log1p(_lap_abs_mean(_half(y2)))
    # Immerkaer (1996): sigma = sqrt(pi / 2) / 6 * mean |Y * M|, M = [1 -2 1]^T [1 -2 1].
    r = y[:, :, :-2] + y[:, :, 2:] - 2.0 * y[:, :, 1:-1]
    m = r[:, :-2] + r[:, 2:] - 2.0 * r[:, 1:-1]
    s["log_noise"] = math.log1p(math.sqrt(math.pi / 2.0) / 6.0 * float(np.abs(m).mean()))
    hb, wb = h // 8, w // 8
    blocks = y[:, : hb * 8, : wb * 8].reshape(n, hb, 8, wb, 8)
    sums = blocks.sum(axis=(2, 4))
    squares = np.square(blocks).sum(axis=(2, 4))
    var = np.maximum(squares / 64.0 - np.square(sums / 64.0), 0.0).ravel()
    lv = np.log1p(var)
    p10, p50, p90 = np.percentile(lv, (10, 50, 90))
    s["log_block_var_mean"] = float(lv.mean())
    s["log_block_var_std"] = float(lv.std())
    s["log_block_var_p10"] = float(p10)
    s["log_block_var_p50"] = float(p50)
    s["log_block_var_p90"] = float(p90)
    s["flat1_share"] = float(np.count_nonzero(var < 1.0)) / var.size
    s["flat3_share"] = float(np.count_nonzero(var < 9.0)) / var.size
    s["flat8_share"] = float(np.count_nonzero(var < 64.0)) / var.size
    if cb is None:
        for key in ("log_chroma_std", "log_chroma_sat", "log_chroma_grad", "log_chroma_lap"):
            s[key] = 0.0
        chroma_grad = 0.0
    else:
        s["log_chroma_std"] = math.log1p(float(cb.std()) + float(cr.std()))
        s["log_chroma_sat"] = math.log1p(float(np.hypot(cb, cr).mean()))
        chroma_grad = _grad_abs_mean(cb) + _grad_abs_mean(cr)
        s["log_chroma_grad"] = math.log1p(chroma_grad)
        s["log_chroma_lap"] = math.log1p(_lap_abs_mean(cb) + _lap_abs_mean(cr))
    s["chroma_luma_grad"] = math.log1p(chroma_grad) - math.log1p(grad_mean)
    s.update(_quantization_dssim(y, cb, cr))
    return s


# libjpeg's Annex K tables (row-major, natural order) and its quality scaling.
_JPEG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float32,
).reshape(8, 8)  # fmt: skip
_JPEG_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
     24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32,
    dtype=np.float32,
).reshape(8, 8)  # fmt: skip
_C2 = (0.03 * 255.0) ** 2  # SSIM's contrast constant (K2 = 0.03, L = 255)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


# The 2-D orthonormal DCT of flattened n x n blocks: coefficients = blocks @ _KRON[n].
_KRON = {n: np.kron(_dct_matrix(n), _dct_matrix(n)).T.astype(np.float32) for n in (4, 8)}


def _jpeg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1.0, 255.0).ravel()


def _blocks(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, h, w) planes -> the n x n blocks' DCT coefficients (B, n*n), their variances (B)
    and SSIM's contrast term's numerator 2 v + C2 (edges that do not fill a block left
    out)."""
    count, h, w = p.shape
    hb, wb = h // n, w // n
    b = p[:, : hb * n, : wb * n].reshape(count, hb, n, wb, n).transpose(0, 1, 3, 2, 4)
    flat = b.reshape(-1, n * n)
    v = flat.var(axis=1)
    return flat @ _KRON[n], v, 2.0 * v + _C2


def _block_ssim(numerator: np.ndarray, error) -> float:
    """Mean over blocks of SSIM's contrast-structure term for a block of variance v with an
    added independent error of mean square e: (2 v + C2) / (2 v + e + C2)."""
    return float(np.mean(numerator / (numerator + error)))


def _quantized_error(coefficients: np.ndarray, steps) -> np.ndarray:
    """Mean square error per pixel of each block after rounding its orthonormal DCT
    coefficients to multiples of ``steps`` (Parseval: the same in pixels).

    Computed as the mean of (c / s - rint(c / s))^2 s^2: one temporary array, and the sum over
    a block's coefficients weighted by s^2 is a matrix-vector product (half the time of the
    plain form)."""
    r = coefficients / steps
    np.subtract(r, np.rint(r), out=r)
    np.square(r, out=r)
    if np.ndim(steps) == 0:
        return r.mean(axis=1) * np.float32(steps * steps)
    return r @ (np.square(steps, dtype=np.float32) / np.float32(r.shape[1]))


def _quantization_dssim(y: np.ndarray, cb: np.ndarray | None, cr: np.ndarray | None):
    """The log_qdssim_* features: a cheap model of what transform coding does to SSIM.

    Orthonormal 8x8 DCT blocks (JPEG's transform) of Y' quantized with libjpeg's scaled
    tables; for colour, Cb and Cr 2x2-averaged (4:2:0) below quality 90 plus the error of that
    subsampling, full size at 90; per plane SSIM ~ the mean contrast-structure term of
    `_block_ssim`, weighted 6:1:1 as the service's DSSIM, DSSIM = (1 - SSIM) / 2."""
    out: dict[str, float] = {}
    ycoef, _, ynum = _blocks(y, 8)
    planes = []
    if cb is not None:
        for c in (cb, cr):
            half = _half(c)
            up = np.repeat(np.repeat(half, 2, axis=1), 2, axis=2)
            sub_err = float(np.square(c[:, : up.shape[1], : up.shape[2]] - up).mean())
            hcoef, _, hnum = _blocks(half, 8)
            fcoef, _, fnum = _blocks(c, 8)
            planes.append((hcoef, hnum, sub_err, fcoef, fnum))
    for quality in (30, 50, 70, 90):
        ssim = _block_ssim(ynum, _quantized_error(ycoef, _jpeg_table(_JPEG_LUMA, quality)))
        if planes:
            table = _jpeg_table(_JPEG_CHROMA, quality)
            chroma = 0.0
            for hcoef, hnum, sub_err, fcoef, fnum in planes:
                if quality >= 90:  # libvips' "auto": 4:4:4 from Q 90
                    chroma += _block_ssim(fnum, _quantized_error(fcoef, table))
                else:
                    # A half-size block's error spreads over 2x2 pixels, the same mean square.
                    chroma += _block_ssim(hnum, _quantized_error(hcoef, table) + sub_err)
            ssim = 0.75 * ssim + 0.125 * chroma
        out[f"log_qdssim_jpeg{quality}"] = math.log(max((1.0 - ssim) / 2.0, 1e-7))
    coef4, _, num4 = _blocks(y, 4)
    for step in (4, 10, 25):
        ssim = _block_ssim(num4, _quantized_error(coef4, np.float32(step)))
        out[f"log_qdssim_4x4_s{step}"] = math.log(max((1.0 - ssim) / 2.0, 1e-7))
    return out


# --- the curve's description (curve.json) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurveSpec:
    """What the model's output means: ``output[f, i]`` = predicted log(DSSIM) of format
    ``formats[f]`` at quality ``grid[i]`` (``curve.json`` beside ``config.pbtxt``)."""

    formats: tuple[str, ...]
    grid: tuple[int, ...]
    version: str
    features_version: int = FEATURES_VERSION
    input_name: str = "features"
    output_name: str = "log_dssim"
    # Per format, the deviation of the model's log(DSSIM) error on pictures it was not fitted
    # on (1.25 x its leave-one-package-out MAE: a normal error's); empty when not served.
    log_errors: Mapping[str, float] = field(default_factory=dict, hash=False)

    @classmethod
    def load(cls, path: str | Path) -> CurveSpec:
        data = json.loads(Path(path).read_text())
        return cls(
            formats=tuple(data["formats"]),
            grid=tuple(int(q) for q in data["grid"]),
            version=str(data["version"]),
            features_version=int(data["features_version"]),
            input_name=data.get("input", "features"),
            output_name=data.get("output", "log_dssim"),
            log_errors={k: float(v) for k, v in data.get("log_dssim_error", {}).items()},
        )

    def index(self, fmt: str) -> int:
        return self.formats.index(fmt)


# --- curve maths ----------------------------------------------------------------------------


def monotone(log_dssim: Sequence[float]) -> np.ndarray:
    """The closest non-increasing curve (least squares, pool-adjacent-violators): DSSIM never
    grows with the quality. A non-increasing curve comes back unchanged."""
    y = np.asarray(log_dssim, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError("monotone takes one curve")
    values: list[float] = []
    counts: list[int] = []
    for v in y:
        values.append(float(v))
        counts.append(1)
        while len(values) > 1 and values[-2] < values[-1]:
            n = counts[-2] + counts[-1]
            merged = (values[-2] * counts[-2] + values[-1] * counts[-1]) / n
            values[-2:] = [merged]
            counts[-2:] = [n]
    return np.repeat(np.array(values), counts)


def _checked(grid: Sequence[float], log_dssim: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(grid, dtype=np.float64)
    y = np.asarray(log_dssim, dtype=np.float64)
    if q.ndim != 1 or y.shape != q.shape or len(q) < 2:
        raise ValueError("need one log-DSSIM value per grid quality, at least two")
    if np.any(np.diff(q) <= 0):
        raise ValueError("grid qualities must increase")
    if not np.all(np.isfinite(y)):
        raise ValueError("the curve must be finite")
    return q, y


def log_dssim_at(grid: Sequence[float], log_dssim: Sequence[float], quality: float) -> float:
    """The curve's log DSSIM at ``quality``: linear between grid points, the end segments'
    slopes past the ends."""
    q, y = _checked(grid, log_dssim)
    i = int(np.clip(np.searchsorted(q, quality) - 1, 0, len(q) - 2))
    slope = (y[i + 1] - y[i]) / (q[i + 1] - q[i])
    return float(y[i] + slope * (quality - q[i]))


# Past the grid's ends the curve is extended by its end segment's slope, but no flatter than
# this (log DSSIM per quality step): a flat end would send the inversion to infinity.
MIN_END_SLOPE = 0.005


def quality_for(
    grid: Sequence[float],
    log_dssim: Sequence[float],
    target: float,
    low: float = 1.0,
    high: float = 100.0,
) -> float:
    """The (real) quality at which the curve, made non-increasing, reaches DSSIM ``target``:
    the lowest quality whose predicted DSSIM is <= target, interpolated linearly in (quality,
    log DSSIM) between grid points and extrapolated past the ends; clamped to [low, high]."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError("target must be a finite DSSIM > 0")
    if not low <= high:
        raise ValueError("need low <= high")
    q, y = _checked(grid, log_dssim)
    y = monotone(y)
    t = math.log(target)
    if y[0] <= t:  # already met at the lowest grid quality: extend the first segment down
        slope = min((y[1] - y[0]) / (q[1] - q[0]), -MIN_END_SLOPE)
        found = q[0] + (t - y[0]) / slope
    elif y[-1] > t:  # not met at the highest: extend the last segment up
        slope = min((y[-1] - y[-2]) / (q[-1] - q[-2]), -MIN_END_SLOPE)
        found = q[-1] + (t - y[-1]) / slope
    else:
        i = int(np.argmax(y <= t))  # first point at or under the target; y[i - 1] > t
        q0, q1, y0, y1 = q[i - 1], q[i], y[i - 1], y[i]
        found = q0 + (t - y0) * (q1 - q0) / (y1 - y0)
    return float(min(max(found, low), high))


def predicted_quality(
    grid: Sequence[float],
    log_dssim: Sequence[float],
    target: float,
    low: int = 1,
    high: int = 100,
) -> int:
    """``quality_for`` rounded to the encoder's integer quality, within [low, high]."""
    return int(min(max(round(quality_for(grid, log_dssim, target, low, high)), low), high))


def shift_through(
    grid: Sequence[float], log_dssim: Sequence[float], quality: float, dssim: float
) -> np.ndarray:
    """The correction step: the predicted curve moved in log space (every point by the same
    amount) so that it passes through the measured ``(quality, dssim)``."""
    if not (dssim > 0 and math.isfinite(dssim)):
        raise ValueError("the measured DSSIM must be finite and > 0")
    q, y = _checked(grid, log_dssim)
    y = monotone(y)
    return y + (math.log(max(dssim, 1e-12)) - log_dssim_at(q, y, quality))


def corrected_quality(
    grid: Sequence[float],
    log_dssim: Sequence[float],
    target: float,
    measured: tuple[float, float],
    low: int = 1,
    high: int = 100,
) -> int:
    """The next quality to encode after measuring ``measured = (quality, dssim)``: the
    predicted curve shifted through that point, inverted for ``target``."""
    shifted = shift_through(grid, log_dssim, *measured)
    return predicted_quality(grid, shifted, target, low, high)


def curve_points(grid: Sequence[float], log_dssim: Sequence[float]) -> list[tuple[float, float]]:
    """The monotone curve as ``(quality, DSSIM)`` points, e.g. for the encoder's
    ``QualityCurve.from_points`` (imagesvc.encoding.search)."""
    q, y = _checked(grid, log_dssim)
    return [(float(a), float(math.exp(b))) for a, b in zip(q, monotone(y), strict=True)]
