"""DSSIM between the image that goes into the encoder and its decoded result (autoquality).

The formula (README "Output encoding" > "DSSIM"), recomputable with scikit-image:

1. Both images are 8-bit sRGB (R'G'B' in 0..255, gamma-encoded, no linearisation), the same
   size: the output size. Alpha is flattened onto the same background in both.
2. Perceptual space: Y'CbCr with the full-range BT.601 matrix of JPEG/JFIF, as floats (not
   rounded)::

       Y  =       0.299    R + 0.587    G + 0.114    B
       Cb = 128 - 0.168736 R - 0.331264 G + 0.5      B
       Cr = 128 + 0.5      R - 0.418688 G - 0.081312 B

   (exactly: Cb = 128 + (B - Y) / 1.772, Cr = 128 + (R - Y) / 1.402.)
3. Per channel c, SSIM_c is the mean SSIM of Wang et al. (2004) with scikit-image's defaults:
   a 7x7 uniform window, K1 = 0.01, K2 = 0.03, L = 255, sample (co)variances (N / (N - 1),
   N = 49), averaged over every pixel whose window lies inside the image (the image less 3 px
   on each side)::

       skimage.metrics.structural_similarity(x_c, y_c, data_range=255, win_size=7,
                                             gaussian_weights=False, use_sample_covariance=True)

   An image under 7 px on a side uses the largest odd window that fits (``win_size=5`` for a
   5-px side); with a 1-px window the contrast-structure term is 1 (variances are 0).
4. SSIM = 0.75 SSIM_Y + 0.125 SSIM_Cb + 0.125 SSIM_Cr (luma 6:1:1 over each chroma plane; a
   grey image, one band in and out, has SSIM = SSIM_Y).
5. DSSIM = (1 - SSIM) / 2, within [0, 1]: 0 for identical images.

This is the bounded scale of Wikipedia's "structural dissimilarity" that imgproxy's settings
(target 0.02, allowed error 0.001) assume, not kornelski/dssim's unbounded 1/SSIM - 1.

Why a 7x7 uniform window and not Wang's 11x11 Gaussian (sigma 1.5): the box sums take four
vector additions per axis (an 11-tap Gaussian takes sixteen), which keeps the measure of a
720x588 image under 10 ms on one core in numpy (``bench/autoquality.py --dssim-only``); the
Gaussian took 48-60 ms (libvips float convolution) for the same image. Both see the 8x8 blocks
and ringing of JPEG and the smoothing of WebP/AVIF at these qualities.

Implementation: numpy float32 on flat planes. A window sum along a row is a sum of shifted
copies of the flattened plane (shifts 1, 2, 4: the row-wrapped sums fall outside the valid
region and are never read), down the columns the same with shifts of whole rows. Values are
centred (Y - 128, Cb - 128, Cr - 128) for the (co)variances, which SSIM does not change, so
float32 keeps ~1e-6 of the float64 result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyvips

K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
WINDOW = 7
CHANNEL_WEIGHTS = (0.75, 0.125, 0.125)  # Y', Cb, Cr
# Full-range BT.601 (JFIF) R'G'B' -> Y'CbCr, the offsets (0, 128, 128) left out: centred values.
YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.299 / 1.772, -0.587 / 1.772, 0.886 / 1.772],
        [0.701 / 1.402, -0.587 / 1.402, -0.114 / 1.402],
    ],
    dtype=np.float64,
)
_YCBCR32 = YCBCR.astype(np.float32)
OFFSETS = (128.0, 128.0, 128.0)  # what centring took off each channel


def dssim_from_ssim(ssim: float) -> float:
    return (1.0 - ssim) / 2.0


def window_for(width: int, height: int) -> int:
    """The window side for an image: 7, or the largest odd side that fits."""
    side = min(WINDOW, width, height)
    return side if side % 2 else side - 1


def _box_flat(x: np.ndarray, k: int, step: int, length: int) -> np.ndarray:
    """Sums of ``k`` samples ``step`` apart along the last axis of ``x`` (flat planes): element
    ``i`` of the result is ``x[..., i] + x[..., i + step] + ... + x[..., i + (k-1) step]``, for
    ``i < length``. Built from doubling sums: ``k`` = 7 takes four additions."""
    parts = []
    offset = 0  # samples already covered, in units of step
    partial = x  # sums of `size` consecutive samples
    size = 1
    while k:
        if k & 1:
            parts.append(partial[..., offset * step : offset * step + length])
            offset += size
        k >>= 1
        if k:
            n = partial.shape[-1] - size * step
            partial = partial[..., :n] + partial[..., size * step : size * step + n]
            size *= 2
    if len(parts) == 1:
        return parts[0].copy()
    result = parts[0] + parts[1]
    for part in parts[2:]:
        result += part
    return result


def _window_sums(planes: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """Sums over every k x k window of flat planes (C, H*W). The result is flat too,
    (C, (H-k)*W + W-k+1): element r*W + c is the window whose top-left pixel is (r, c), valid
    for c <= W-k (the others wrapped around a row end and are never read)."""
    across = _box_flat(planes, k, 1, height * width - k + 1)
    return _box_flat(across, k, width, (height - k) * width + width - k + 1)


def _valid(flat: np.ndarray, rows: int, width: int, k: int) -> np.ndarray:
    """The valid windows of a flat window-sum array: a (C, rows, W-k+1) view."""
    channel_stride, item = flat.strides
    return np.lib.stride_tricks.as_strided(
        flat,
        shape=(flat.shape[0], rows, width - k + 1),
        strides=(channel_stride, width * item, item),
    )


# Output rows per strip: one strip's arrays (~1 MB at 720 px wide) stay in the L2 cache, which
# made the measure ~1.7x faster than whole-image arrays (9 ms, 16 ms).
STRIP_ROWS = 48


class DssimReference:
    """The image about to be encoded, with what DSSIM needs of it computed once.

    ``image``: sRGB (or b-w) uchar, 3 (or 1) bands, alpha already flattened by the caller onto
    ``background`` (a decoded encode with alpha is flattened onto it too). Then
    ``dssim(decoded)`` / ``dssim_of(data)`` measure any encode of it, from any thread (the
    reference is read-only after construction).

    Memory: five float32 arrays of the image's size per channel (the scaled planes and four
    per-window terms), 60 bytes a pixel for colour, 20 for grey: 25 MB at 720x588.
    """

    __slots__ = (
        "width",
        "height",
        "bands",
        "background",
        "window",
        "_n",
        "_off",
        "_c1",
        "_c2",
        "_weights",
        "_x2n",
        "_sx2",
        "_ux2",
        "_b1",
        "_b2",
        "_check",
    )

    def __init__(
        self,
        image: pyvips.Image,
        *,
        background: tuple[int, int, int] = (255, 255, 255),
        check: Callable[[], None] | None = None,
    ):
        # ``check`` (e.g. the request's deadline check) runs before every strip of rows, here
        # and in each measure: the numpy work is not libvips', so no kill flag reaches it.
        self._check = check or _no_check
        self.background = tuple(background)
        image = self._normalise(image, bands=None)
        self.width, self.height, self.bands = image.width, image.height, image.bands
        self.window = k = window_for(self.width, self.height)
        n = float(k * k)
        cov = n / (n - 1.0) if k > 1 else 1.0
        self._n = np.float32(n)
        # Every term below is a window sum (N x a mean): with sums in place of means the
        # luminance terms are scaled by N^2, and the contrast terms by N^2 / cov, so
        #   A1 = 2 ux uy + C1 N^2            B1 = ux^2 + uy^2 + C1 N^2
        #   A2 = 2 (N sxy - sx sy) + C2 N^2 / cov
        #   B2 = (N sxx - sx^2) + (N syy - sy^2) + C2 N^2 / cov
        # (u: sums of the uncentred channel, s: of the centred one) and SSIM = A1 A2 / (B1 B2).
        self._off = np.array(OFFSETS[: self.bands], dtype=np.float32)[:, None] * self._n
        self._c1 = np.float32((K1 * DATA_RANGE) ** 2 * n * n)
        self._c2 = np.float32((K2 * DATA_RANGE) ** 2 * n * n / cov)
        self._weights = (
            np.array(CHANNEL_WEIGHTS, dtype=np.float64) if self.bands == 3 else np.ones(1)
        )
        c, w, h = self.bands, self.width, self.height
        pixels = image.numpy()
        x = self._planes(pixels)
        # 2 N x: its product with y sums to 2 N sxy directly.
        self._x2n = x * np.float32(2 * n)
        length = (h - k) * w + w - k + 1
        # Ones where no window is (the row ends), so that those (never read) terms stay finite.
        self._sx2 = np.zeros((c, length), dtype=np.float32)
        self._ux2 = np.zeros((c, length), dtype=np.float32)
        self._b1 = np.ones((c, length), dtype=np.float32)
        self._b2 = np.ones((c, length), dtype=np.float32)
        for r0, r1 in self._strips():
            self._check()
            rows_in = r1 - r0 + k - 1
            xs = x[:, r0 * w : (r0 + rows_in) * w]
            sums = _window_sums(np.concatenate([xs, xs * xs]), k, w, rows_in)
            sx, sxx = sums[:c], sums[c:]
            at = slice(r0 * w, r0 * w + sums.shape[1])
            ux = sx + self._off
            np.multiply(sx, 2, out=self._sx2[:, at])
            np.multiply(ux, 2, out=self._ux2[:, at])
            np.multiply(ux, ux, out=self._b1[:, at])
            self._b1[:, at] += self._c1
            sxx *= self._n
            sxx -= sx * sx
            sxx += self._c2
            self._b2[:, at] = sxx

    # --- inputs ---------------------------------------------------------------------------

    def _normalise(self, image: pyvips.Image, bands: int | None) -> pyvips.Image:
        if image.hasalpha():
            if image.bands <= 2:  # grey + alpha: onto the background's luminance
                r, g, b = self.background
                background = [round(0.2126 * r + 0.7152 * g + 0.0722 * b)]
            else:
                background = list(self.background)
            image = image.flatten(background=background)
        if image.format != "uchar" or image.bands not in (1, 3):
            # 16-bit, CMYK, Lab...: to 8-bit sRGB (or grey), as the encoder would get them.
            image = image.colourspace("b-w" if image.bands == 1 else "srgb").cast("uchar")
        if bands is None:
            if image.bands not in (1, 3):
                raise ValueError(f"DSSIM needs 1 or 3 bands, got {image.bands}")
            return image
        if image.bands != bands:
            image = image.colourspace("b-w" if bands == 1 else "srgb").cast("uchar")
            if image.bands != bands:
                raise ValueError(f"decoded image has {image.bands} bands, expected {bands}")
        return image

    def _planes(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 HxW(x3) -> float32 (C, H*W) centred Y'CbCr (or centred grey)."""
        if self.bands == 1:
            flat = pixels.reshape(1, -1)
            out = np.subtract(flat, np.float32(OFFSETS[0]), out=out, dtype=np.float32)
            return out
        rgb = pixels.reshape(-1, 3).astype(np.float32)
        out = np.matmul(_YCBCR32, rgb.T, out=out)
        out[0] -= np.float32(OFFSETS[0])
        return out

    # --- the measure ----------------------------------------------------------------------

    @property
    def pad(self) -> int:
        """Pixels left out on each side: the SSIM map covers [pad, H-pad) x [pad, W-pad)."""
        return (self.window - 1) // 2

    def _pixels(self, decoded: pyvips.Image) -> np.ndarray:
        decoded = self._normalise(decoded, self.bands)
        if (decoded.width, decoded.height) != (self.width, self.height):
            raise ValueError(
                f"decoded image is {decoded.width}x{decoded.height}, "
                f"the reference {self.width}x{self.height}"
            )
        return decoded.numpy()

    def _strips(self):
        rows = self.height - self.window + 1
        for r0 in range(0, rows, STRIP_ROWS):
            yield r0, min(r0 + STRIP_ROWS, rows)

    def _strip_map(self, pixels: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """SSIM maps of the windows whose top row is in [r0, r1): a (C, r1-r0, W-k+1) view."""
        k, w, c = self.window, self.width, self.bands
        rows_in = r1 - r0 + k - 1
        stack = np.empty((3 * c, rows_in * w), dtype=np.float32)
        y = self._planes(pixels[r0 : r0 + rows_in], out=stack[:c])
        np.multiply(y, y, out=stack[c : 2 * c])
        np.multiply(self._x2n[:, r0 * w : (r0 + rows_in) * w], y, out=stack[2 * c :])
        sums = _window_sums(stack, k, w, rows_in)
        sy, syy, a2 = sums[:c], sums[c : 2 * c], sums[2 * c :]
        at = slice(r0 * w, r0 * w + sums.shape[1])
        uy = sy + self._off
        a1 = self._ux2[:, at] * uy
        a1 += self._c1
        b1 = np.multiply(uy, uy, out=uy)
        b1 += self._b1[:, at]
        a2 -= self._sx2[:, at] * sy
        a2 += self._c2
        b2 = np.multiply(syy, self._n, out=syy)
        b2 -= sy * sy
        b2 += self._b2[:, at]
        a1 *= a2
        b1 *= b2
        a1 /= b1
        return _valid(a1, r1 - r0, w, k)

    def ssim_maps(self, decoded: pyvips.Image) -> np.ndarray:
        """Per-channel SSIM maps, float32 (C, H - 2 pad, W - 2 pad), C = 3 (Y', Cb, Cr) or 1;
        element (c, i, j) is the window centred on pixel (i + pad, j + pad)."""
        pixels = self._pixels(decoded)
        k = self.window
        out = np.empty((self.bands, self.height - k + 1, self.width - k + 1), dtype=np.float32)
        for r0, r1 in self._strips():
            self._check()
            out[:, r0:r1] = self._strip_map(pixels, r0, r1)
        return out

    def ssim(self, decoded: pyvips.Image, weights: np.ndarray | None = None) -> float:
        """The channel-weighted mean SSIM. ``weights``, optional, an HxW array >= 0 at output
        size, weights each window by its centre pixel (for region-aware targets)."""
        pixels = self._pixels(decoded)
        p = self.pad
        cropped = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if weights.shape != (self.height, self.width):
                raise ValueError(f"weights are {weights.shape}, need {(self.height, self.width)}")
            cropped = weights[p : self.height - p, p : self.width - p]
            total = float(cropped.sum(dtype=np.float64))
            if not total > 0:
                raise ValueError("weights sum to 0 inside the measured region")
        else:
            total = float((self.height - 2 * p) * (self.width - 2 * p))
        sums = np.zeros(self.bands, dtype=np.float64)
        for r0, r1 in self._strips():
            self._check()
            strip = self._strip_map(pixels, r0, r1)
            if cropped is None:
                sums += strip.sum(axis=(1, 2), dtype=np.float64)
            else:
                sums += (strip * cropped[r0:r1]).sum(axis=(1, 2), dtype=np.float64)
        return float(self._weights @ (sums / total))

    def weighted_ssims(self, decoded: pyvips.Image, weights: list[np.ndarray]) -> list[float]:
        """``ssim(decoded, w)`` for every ``w`` of ``weights`` (HxW, >= 0, at output size),
        the SSIM map computed once; strips where every weight is 0 are skipped. A weight map
        summing to 0 inside the measured region gives NaN (no pixel of that region)."""
        pixels = self._pixels(decoded)
        p = self.pad
        cropped = []
        for w in weights:
            w = np.asarray(w, dtype=np.float32)
            if w.shape != (self.height, self.width):
                raise ValueError(f"weights are {w.shape}, need {(self.height, self.width)}")
            cropped.append(w[p : self.height - p, p : self.width - p])
        totals = [float(c.sum(dtype=np.float64)) for c in cropped]
        sums = [np.zeros(self.bands, dtype=np.float64) for _ in cropped]
        for r0, r1 in self._strips():
            self._check()
            parts = [c[r0:r1] for c in cropped]
            if not any(part.any() for part in parts):
                continue
            strip = self._strip_map(pixels, r0, r1)
            for s, part in zip(sums, parts, strict=True):
                s += (strip * part).sum(axis=(1, 2), dtype=np.float64)
        return [
            float(self._weights @ (s / total)) if total > 0 else float("nan")
            for s, total in zip(sums, totals, strict=True)
        ]

    def dssim(self, decoded: pyvips.Image, weights: np.ndarray | None = None) -> float:
        """DSSIM = (1 - SSIM) / 2 of a decoded encode of the reference (module docstring)."""
        return dssim_from_ssim(self.ssim(decoded, weights))

    def dssim_of(self, data: bytes, weights: np.ndarray | None = None) -> float:
        """DSSIM of encoded bytes (JPEG, WebP, AVIF, PNG...), decoded with libvips."""
        self._check()
        return self.dssim(decode(data), weights)

    def __call__(self, data: bytes) -> float:
        """``measure`` for ``search_quality``: the DSSIM of encoded bytes."""
        return self.dssim_of(data)


def _no_check() -> None:
    pass


def decode(data: bytes) -> pyvips.Image:
    """Decode bytes this service encoded (the first page/frame, upright as stored)."""
    return pyvips.Image.new_from_buffer(data, "")


def dssim(reference: pyvips.Image, decoded: pyvips.Image) -> float:
    """One-off DSSIM of two images of the same size (build a ``DssimReference`` to measure
    several encodes of one image)."""
    return DssimReference(reference).dssim(decoded)
