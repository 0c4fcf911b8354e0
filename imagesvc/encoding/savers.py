"""One encode of one image: the libvips saver of the format with every per-format option mapped
(README "Output encoding" > "Formats and options"), and ``prepare``, what every encode of an
image shares (colour space, ICC profile, alpha, metadata).

Option -> libvips (8.x names):

=====================  ======================================================================
jpeg                   ``jpegsave``: ``Q``, ``optimize_coding=True`` (always, as before),
                       ``interlace`` (progressive; also when ``optimize_scans``),
                       ``subsample_mode`` ("off" for no_subsample, else "auto": 4:4:4 from
                       Q 90), ``trellis_quant``, ``overshoot_deringing``, ``optimize_scans``,
                       ``quant_table`` (mozjpeg's tables 0..8)
png                    ``pngsave``: ``compression=6``, ``interlace`` (Adam7); quantized:
                       ``palette=True``, ``bitdepth`` (1, 2, 4 or 8: the smallest holding the
                       palette), then at most ``palette_colors`` entries (see below)
webp                   ``webpsave``: ``Q``, ``effort``, ``lossless``, ``near_lossless`` (libvips
                       turns lossless on and uses ``Q`` as libwebp's near-lossless level),
                       ``smart_subsample``
avif                   ``heifsave``: ``compression="av1"``, ``Q``, ``effort``,
                       ``subsample_mode`` (auto, on, off), ``lossless``
gif, tiff              ``gifsave``; ``tiffsave`` with ``compression="deflate"`` (as before)
=====================  ======================================================================

libvips' PNG quantizer (libimagequant) takes a bit depth, not a colour count, and libpng
writes only depths 1, 2, 4 and 8: a request for 100 colours is quantized to at most 256. When
the palette written holds more entries than asked, its least used colours are merged into
their nearest kept ones and the image is written again (libimagequant keeps an image's exact
colours when they fit), so the palette never holds more than ``palette_colors`` entries.
"""

from __future__ import annotations

import bisect

import struct
from dataclasses import dataclass

import numpy as np
import pyvips

from imagesvc.encoding.spec import AvifSpec, JpegSpec, PngSpec, WebpSpec
from imagesvc.ops.background import flatten

WRITABLE_FORMATS = ("jpeg", "png", "webp", "avif", "gif", "tiff")
ALPHA_FORMATS = ("png", "webp", "avif", "gif", "tiff")
PNG_COMPRESSION = 6
# libheif maps AVIF's quality 1..100 onto libaom's 64 quantizer steps: the qualities of one step
# write the same file, at any effort. The first quality of each step, measured on the bundled
# libvips (tests/encoding/test_savers.py checks it against the encoder); the quality search
# encodes one quality per step (``quality_step``).
AVIF_QUALITY_STEPS = (
    1, 3, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 35, 37, 39, 40, 42, 44,
    45, 47, 49, 50, 52, 54, 55, 56, 58, 59, 60, 62, 63, 64, 66, 67, 68, 70, 71, 72, 74, 75,
    76, 78, 79, 80, 82, 83, 84, 86, 87, 88, 90, 91, 92, 94, 95, 96, 98, 99, 100,
)  # fmt: skip
PNG_BIT_DEPTHS = (1, 2, 4, 8)

FormatSpec = JpegSpec | PngSpec | WebpSpec | AvifSpec


@dataclass(frozen=True, slots=True)
class SaveParams:
    """Everything one encode needs besides the image and what metadata to keep."""

    format: str  # jpeg | png | webp | avif | gif | tiff
    quality: int = 80  # Q of the lossy formats, and WebP's near-lossless level
    lossless: bool = False  # webp, avif
    near_lossless: bool = False  # webp
    effort: int | None = None  # webp (0..6), avif (0..9); None: libvips' default
    palette_colors: int | None = None  # png: quantize to at most this many colours (2..256)
    spec: FormatSpec | None = None  # the format's options; None: the spec's defaults

    def describe(self) -> str:
        mode = "lossless" if self.lossless else "near-lossless" if self.near_lossless else "lossy"
        colours = f", {self.palette_colors} colours" if self.palette_colors else ""
        return f"{self.format} q{self.quality} {mode}{colours}"


def prepare(
    image: pyvips.Image, output_format: str, keep_icc: bool, strip: bool
) -> tuple[pyvips.Image, str]:
    """The image as every encoder of ``output_format`` takes it, and the ``keep`` value of the
    savers: without ``keep_icc`` colours go to sRGB through the embedded profile, which is then
    dropped (browsers assume sRGB); 8-bit sRGB or grey; alpha flattened onto white for formats
    without alpha; metadata stripped (the ICC profile kept with ``keep_icc``) or kept whole."""
    if image.get_typeof("icc-profile-data") and not keep_icc:
        image = image.icc_transform("srgb", embedded=True, intent="perceptual")
        image = image.copy()
        image.remove("icc-profile-data")
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("b-w" if image.bands <= 2 else "srgb").cast("uchar")
    if image.hasalpha() and output_format not in ALPHA_FORMATS:
        image = flatten(image, (255, 255, 255))
    if strip:
        keep = "icc" if keep_icc else "none"
    else:
        keep = "all"
    return image, keep


def quality_step(fmt: str):
    """For a format whose qualities come in steps (AVIF): quality -> the first quality of its
    step (qualities of one step encode to the same file); None for the others."""
    if fmt != "avif":
        return None
    return _avif_step


def _avif_step(quality: int) -> int:
    return AVIF_QUALITY_STEPS[bisect.bisect_right(AVIF_QUALITY_STEPS, quality) - 1]


def save(image: pyvips.Image, params: SaveParams, keep: str) -> bytes:
    """Encode a ``prepare``d image with ``params``; ``keep`` is libvips' metadata to keep."""
    fmt = params.format
    if fmt == "jpeg":
        return _jpeg(image, params, keep)
    if fmt == "png":
        return _png(image, params, keep)
    if fmt == "webp":
        spec = params.spec if isinstance(params.spec, WebpSpec) else WebpSpec()
        options = {"Q": params.quality, "keep": keep, "smart_subsample": spec.smart_subsample}
        if params.effort is not None:
            options["effort"] = params.effort
        if params.lossless:
            options["lossless"] = True
        elif params.near_lossless:
            options["near_lossless"] = True
        return image.webpsave_buffer(**options)
    if fmt == "avif":
        spec = params.spec if isinstance(params.spec, AvifSpec) else AvifSpec()
        effort = spec.effort if params.effort is None else params.effort
        options = {
            "Q": params.quality,
            "compression": "av1",
            "effort": effort,
            "subsample_mode": spec.subsample,
            "keep": keep,
        }
        if params.lossless:
            options["lossless"] = True
        return image.heifsave_buffer(**options)
    if fmt == "gif":
        return image.gifsave_buffer(keep=keep)
    if fmt == "tiff":
        return image.tiffsave_buffer(compression="deflate", keep=keep)
    raise ValueError(f"no saver for {fmt!r}")


def _jpeg(image: pyvips.Image, params: SaveParams, keep: str) -> bytes:
    spec = params.spec if isinstance(params.spec, JpegSpec) else JpegSpec()
    options = {
        "Q": params.quality,
        "keep": keep,
        "optimize_coding": True,
        "interlace": spec.progressive or spec.optimize_scans,
        "subsample_mode": "off" if spec.no_subsample else "auto",
    }
    # mozjpeg's extensions, passed only when asked: a libjpeg without them would refuse them.
    if spec.trellis_quant:
        options["trellis_quant"] = True
    if spec.overshoot_deringing:
        options["overshoot_deringing"] = True
    if spec.optimize_scans:
        options["optimize_scans"] = True
    if spec.quant_table:
        options["quant_table"] = spec.quant_table
    return image.jpegsave_buffer(**options)


def png_bit_depth(colours: int) -> int:
    """The smallest PNG palette bit depth that holds ``colours`` entries."""
    for depth in PNG_BIT_DEPTHS:
        if colours <= 1 << depth:
            return depth
    return 8


def _png(image: pyvips.Image, params: SaveParams, keep: str) -> bytes:
    spec = params.spec if isinstance(params.spec, PngSpec) else PngSpec()
    options = {"compression": PNG_COMPRESSION, "interlace": spec.interlaced, "keep": keep}
    colours = params.palette_colors
    if not colours:
        return image.pngsave_buffer(**options)
    colours = min(max(colours, 2), 256)
    depth = png_bit_depth(colours)
    data = image.pngsave_buffer(palette=True, bitdepth=depth, **options)
    if (png_palette_size(data) or 0) <= colours:
        return data
    # libimagequant filled the bit depth's 2^depth entries: merge down to `colours` and write
    # the (now exactly representable) image again, undithered.
    reduced = _merge_palette(pyvips.Image.new_from_buffer(data, ""), colours)
    return _with_metadata(reduced, image).pngsave_buffer(
        palette=True, bitdepth=depth, dither=0.0, **options
    )


def _merge_palette(decoded: pyvips.Image, colours: int) -> pyvips.Image:
    """The decoded palette image with its least used colours replaced by the nearest of its
    ``colours`` most used ones."""
    pixels = decoded.numpy()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, bands = pixels.shape
    flat = pixels.reshape(-1, bands)
    key = np.zeros(len(flat), dtype=np.uint32)
    for band in range(bands):
        key = (key << np.uint32(8)) | flat[:, band].astype(np.uint32)
    unique, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    palette = np.stack(
        [(unique >> np.uint32(8 * (bands - 1 - b))) & np.uint32(255) for b in range(bands)],
        axis=1,
    ).astype(np.int32)
    kept = np.argsort(-counts, kind="stable")[:colours]
    distance = ((palette[:, None, :] - palette[None, kept, :]) ** 2).sum(axis=2)
    nearest = kept[np.argmin(distance, axis=1)]
    merged = palette[nearest][inverse.reshape(-1)].astype(np.uint8)
    array = merged.reshape(height, width, bands)
    interpretation = "b-w" if bands <= 2 else "srgb"
    return pyvips.Image.new_from_array(np.ascontiguousarray(array), interpretation=interpretation)


_PIXEL_FIELDS = {
    "width",
    "height",
    "bands",
    "format",
    "coding",
    "interpretation",
    "xoffset",
    "yoffset",
    "filename",
    "vips-loader",
    "vips-sequential",
}


def _with_metadata(image: pyvips.Image, source: pyvips.Image) -> pyvips.Image:
    """``image`` carrying ``source``'s metadata and resolution (for the saver's ``keep``)."""
    image = image.copy(xres=source.xres, yres=source.yres)
    for name in source.get_fields():
        if name in _PIXEL_FIELDS or name in ("xres", "yres"):
            continue
        try:
            image.set_type(source.get_typeof(name), name, source.get(name))
        except Exception:  # noqa: BLE001 - a field pyvips cannot copy back; only metadata
            continue
    return image


def png_palette_size(data: bytes) -> int | None:
    """Entries in a PNG's PLTE chunk (None without one), from the chunks before the pixels."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    offset = 8
    end = len(data)
    while offset + 8 <= end:
        (length,) = struct.unpack_from(">I", data, offset)
        kind = bytes(data[offset + 4 : offset + 8])
        if kind == b"PLTE":
            return length // 3
        if kind in (b"IDAT", b"IEND"):
            return None
        offset += 12 + length
    return None


def source_palette(
    image: pyvips.Image, source_format: str, data: bytes | memoryview | None = None
) -> int | None:
    """The palette size of a paletted source (a palette PNG or a GIF), else None.

    From the loader's metadata, on the header image (nothing decoded): libvips sets
    ``palette`` (1) and ``bits-per-sample`` (the index depth) on palette PNGs, and on GIFs
    ``gif-palette`` (the colour table as packed RGBA ints; GIF tables hold 2^n entries). A PNG's
    PLTE may hold fewer entries than its depth allows: given the source bytes, ``data``, its
    entries are counted; else the depth's 2^bits is the size.
    """
    if source_format == "gif":
        if image.get_typeof("gif-palette"):
            size = len(image.get("gif-palette"))
            if size:
                return min(max(size, 2), 256)
        return min(1 << _bits(image, 8), 256)
    if source_format == "png":
        if not (image.get_typeof("palette") and image.get("palette")):
            return None
        if data is not None:
            entries = png_palette_size(data)
            if entries:
                return min(max(entries, 2), 256)
        return min(1 << _bits(image, 8), 256)
    return None


def _bits(image: pyvips.Image, default: int) -> int:
    if image.get_typeof("bits-per-sample"):
        bits = int(image.get("bits-per-sample"))
        if 1 <= bits <= 8:
            return bits
    return default
