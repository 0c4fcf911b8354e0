"""The cost model: CPU and memory per pixel of each kind of libvips work.

Figures are CPU-nanoseconds on the reference machine (the 2-core development VM, one libvips
thread per image) and bytes, fitted to measurements by ``bench/cost_model.py``, which prints
measured against estimated for every operation so the constants can be re-fitted on other
hardware. They are meant to be upper bounds of the common case, not predictions: a request is
refused when its estimate is over budget, so an estimate too low lets an expensive request
through (the deadline still stops it), one too high refuses a request that would have fit.
"""

from __future__ import annotations

import math

NS = 1e-9

# --- Pixel work, per pixel and band of 8-bit samples (16-bit samples cost SAMPLE16 times more).
SAMPLE16 = 1.6
COPY_NS = 0.6  # a pass that moves pixels: crop, flip, rotate, embed, copy to memory
RESAMPLE_READ_NS = 1.2  # each source pixel a downscale reads (libvips' box shrink)
RESAMPLE_NS = 8.0  # each output pixel of a lanczos3 resample
ALPHA_NS = 6.0  # per pixel: premultiply before and unpremultiply after a resample or blur
CONV_TAP_NS = 0.035  # each tap of each pass of a separable integer convolution
SHARPEN_NS = 60.0  # per pixel: to LabS and back, and the mask's fixed part
SMARTCROP_NS = 8.0  # per input pixel: libvips' attention strategy
THUMBNAIL_NS = 4.0  # per input pixel: the detector's downscaled copy
FLATTEN_NS = 3.0  # per pixel: alpha onto a colour

# Decoding, per decoded pixel (after shrink-on-load); a progressive JPEG costs twice as much.
DECODE_NS = {"jpeg": 12.0, "png": 22.0, "webp": 30.0, "gif": 25.0, "avif": 60.0, "tiff": 12.0}
# Encoding, per output pixel, (without alpha, with alpha).
ENCODE_NS = {
    "jpeg": (12.0, 12.0),
    "png": (120.0, 160.0),
    "webp": (115.0, 140.0),
    "avif": (300.0, 330.0),
    "gif": (1100.0, 1100.0),
    "tiff": (95.0, 110.0),
}

# --- Memory.
# Rows a streaming operation holds per step of a chain: libvips computes in strips this tall.
STRIP_ROWS = 256
# Memory of each encoder per output pixel, (without alpha, with alpha), the encoded bytes and
# their copies included; measured on noisy photos, which compress worst. JPEG's is mostly the
# coefficient buffer of optimize_coding; PNG's and TIFF's the output buffer, grown by doubling.
ENCODE_BYTES_PER_PX = {
    "jpeg": (8.5, 8.5),
    "png": (20.0, 24.0),
    "webp": (10.0, 25.0),
    "avif": (26.0, 38.0),
    "gif": (48.0, 48.0),
    "tiff": (17.5, 21.0),
}
# A downscale holds this many rows of its source (in float) at most: libvips' shrink reads
# ahead of what its output strip needs (measured 700-2000 rows from 1500-8000 row sources).
RESIZE_BUFFER_ROWS = 2500
# libjpeg's coefficient buffer of a progressive JPEG, per stored pixel (all components).
PROGRESSIVE_JPEG_BYTES_PER_PX = 6.0
# Whole-frame decoders, bytes per decoded pixel (8-bit; twice for 16-bit AVIF).
WEBP_DECODE_BYTES_PER_PX = 13.0
AVIF_DECODE_BYTES_PER_PX = 16.0
# Encoded bytes per output pixel and band we plan for: the worst case (noise) is the raw size.
ENCODED_BYTES_PER_SAMPLE = {"jpeg": 0.5, "webp": 0.5, "avif": 0.3}


def gaussian_taps(sigma: float) -> int:
    """Width of libvips' gaussian mask at its default minimum amplitude of 0.2."""
    return 2 * math.floor(sigma * math.sqrt(2 * math.log(5))) + 1


def sample_factor(sample_bytes: int) -> float:
    return SAMPLE16 if sample_bytes > 1 else 1.0


# --- Work of the common kinds of pass, in CPU-seconds; ``shape`` is a planning Shape.


def copy_s(shape) -> float:
    """A pass that moves every pixel once (crop, flip, rotate, embed, copy to memory)."""
    return shape.pixels * shape.bands * COPY_NS * NS * sample_factor(shape.sample_bytes)


def resample_s(source, result) -> float:
    """A lanczos3 resample from ``source`` to ``result`` (box shrink first when downscaling),
    premultiplied when there is alpha."""
    factor = sample_factor(source.sample_bytes)
    read = source.pixels * source.bands * RESAMPLE_READ_NS
    write = result.pixels * result.bands * RESAMPLE_NS
    alpha = (source.pixels + result.pixels) * ALPHA_NS if source.has_alpha else 0.0
    return (read + write + alpha) * NS * factor


def convolution_s(shape, taps: int) -> float:
    """A separable convolution (two passes of ``taps``), premultiplied when there is alpha."""
    alpha = shape.pixels * ALPHA_NS if shape.has_alpha else 0.0
    passes = shape.pixels * shape.bands * 2 * taps * CONV_TAP_NS
    return (passes + alpha + shape.pixels * shape.bands * COPY_NS) * NS


def smartcrop_s(shape) -> float:
    return shape.pixels * SMARTCROP_NS * NS


def decoder_bytes(fmt: str, stored, decoded_pixels: int, interlaced: bool) -> int:
    """Memory a decoder holds while it reads ``stored`` (the source's Shape as stored) into
    ``decoded_pixels`` pixels. Baseline JPEG, non-interlaced PNG and TIFF stream in strips;
    WebP, GIF and AVIF decode the whole frame; an interlaced PNG is read whole, and a
    progressive JPEG keeps every coefficient of the full-size image."""
    if fmt == "jpeg":
        return int(stored.pixels * PROGRESSIVE_JPEG_BYTES_PER_PX) if interlaced else 0
    if fmt == "png":
        return stored.nbytes if interlaced else 0
    if fmt == "webp":
        return int(decoded_pixels * WEBP_DECODE_BYTES_PER_PX)
    if fmt == "gif":
        return decoded_pixels * 4
    if fmt == "avif":
        return int(decoded_pixels * AVIF_DECODE_BYTES_PER_PX * stored.sample_bytes)
    return 0
