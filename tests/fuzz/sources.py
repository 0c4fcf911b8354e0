"""Broken sources of every accepted format, built by seeded mutation of small valid files.

The seeds are made here by libvips from generated pixels (nothing downloaded, nothing bundled):
each accepted format in the shapes its decoder treats differently (baseline and progressive
JPEG, 8/16-bit, palette, interlaced and grey+alpha PNG, lossy and lossless WebP with alpha,
still and animated GIF, AVIF, TIFF with extra bands and float samples). The mutations are the
kinds that find decoder bugs (bit flips, overwritten runs, truncation with and without the
format's end marker, inserted and repeated slices) plus format-aware header edits that make a
file claim other dimensions or sample layouts than its data holds.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator

import pyvips

from tests.images import from_array, textured


def _rgba(width: int, height: int) -> pyvips.Image:
    rgb = from_array(textured(width, height))
    ramp = (pyvips.Image.xyz(width, height)[0] * (255 / max(1, width - 1))).cast("uchar")
    return rgb.bandjoin(ramp)


def _animated_gif() -> bytes:
    frames = [
        from_array(textured(48, 32)).rot90() if i % 2 else from_array(textured(32, 48))
        for i in range(3)
    ]
    strip = pyvips.Image.arrayjoin([f.crop(0, 0, 32, 32) for f in frames], across=1)
    strip = strip.copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", 32)
    return strip.gifsave_buffer()


def seeds() -> dict[str, bytes]:
    """Small valid files, one per decoder path."""
    photo = from_array(textured(96, 72))
    grey_alpha = from_array(textured(64, 48)[:, :, :1]).bandjoin(128).copy(interpretation="b-w")
    rgb16 = (_rgba(64, 48) * 257).cast("ushort").copy(interpretation="rgb16")
    five_bands = _rgba(40, 30).bandjoin(7)
    as_float = (from_array(textured(40, 30)).cast("float") / 255).copy(interpretation="scrgb")
    return {
        "jpeg": photo.jpegsave_buffer(Q=85),
        "jpeg-progressive": photo.jpegsave_buffer(Q=85, interlace=True),
        "jpeg-grey": from_array(textured(96, 72)[:, :, 0]).jpegsave_buffer(Q=85),
        "png": photo.pngsave_buffer(),
        "png-rgba16": rgb16.pngsave_buffer(),
        "png-interlaced": _rgba(64, 48).pngsave_buffer(interlace=True),
        "png-palette": photo.pngsave_buffer(palette=True),
        "png-grey-alpha": grey_alpha.pngsave_buffer(),
        "webp": photo.webpsave_buffer(Q=80),
        "webp-lossless-alpha": _rgba(64, 48).webpsave_buffer(lossless=True),
        "gif": photo.gifsave_buffer(),
        "gif-animated": _animated_gif(),
        "avif": photo.heifsave_buffer(Q=60, compression="av1", effort=0),
        "tiff": photo.tiffsave_buffer(compression="deflate"),
        "tiff-5-bands": five_bands.tiffsave_buffer(),
        "tiff-float": as_float.tiffsave_buffer(),
    }


# --- Generic mutations ----------------------------------------------------------------------------


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite_run(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    length = min(rng.randint(1, 64), len(out) - start)
    fill = rng.choice([b"\x00", b"\xff", None])
    out[start : start + length] = (
        fill * length if fill else bytes(rng.randrange(256) for _ in range(length))
    )
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randint(8, max(9, len(data) - 1))]


_END_MARKERS = {b"\xff\xd8": b"\xff\xd9", b"\x89P": None, b"GI": b";"}


def _truncate_keep_end(data: bytes, rng: random.Random) -> bytes:
    """Cut the data short but end the file properly: the decoder meets its end marker early."""
    cut = _truncate(data, rng)
    if data[:2] == b"\x89P":
        return cut + _png_chunk(b"IEND", b"")
    return cut + (_END_MARKERS.get(data[:2]) or b"")


def _insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))) + data[at:]


def _repeat_slice(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(1, 2000))
    return data[:end] + data[start:end] * rng.randint(1, 4) + data[end:]


# --- Header edits: claim other dimensions or layouts than the data holds -----------------------

_SIDES = (0, 1, 2, 3, 255, 4096, 7000, 16384, 65535)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header(data: bytes, rng: random.Random) -> bytes:
    if data[:4] != b"\x89PNG":
        return _flip_bits(data, rng)
    out = bytearray(data)
    # IHDR payload at 16..29: width, height, depth, colour type, compression, filter, interlace.
    field = rng.choice(["width", "height", "depth", "colour", "interlace", "length", "crc"])
    if field in ("width", "height"):
        struct.pack_into(">I", out, 16 if field == "width" else 20, rng.choice(_SIDES))
    elif field == "depth":
        out[24] = rng.choice([1, 2, 4, 8, 16, 3, 0])
    elif field == "colour":
        out[25] = rng.choice([0, 2, 3, 4, 6, 1, 7])
    elif field == "interlace":
        out[28] ^= 1
    elif field == "length":  # a chunk length past the end, or zero
        chunk = data.find(b"IDAT") - 4
        struct.pack_into(">I", out, max(8, chunk), rng.choice([0, 1, 2**31 - 1, len(data) * 4]))
    if field != "crc" and rng.random() < 0.7:  # usually a consistent CRC, so the lie is read
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    return bytes(out)


def _jpeg_header(data: bytes, rng: random.Random) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        sof = data.find(marker)
        if sof > 0:
            break
    else:
        return _flip_bits(data, rng)
    out = bytearray(data)
    field = rng.choice(["height", "width", "both", "components", "precision"])
    if field in ("height", "both"):
        struct.pack_into(">H", out, sof + 5, rng.choice(_SIDES[:-1] + (65500,)))
    if field in ("width", "both"):
        struct.pack_into(">H", out, sof + 7, rng.choice(_SIDES[:-1] + (65500,)))
    if field == "components":
        out[sof + 9] = rng.choice([0, 2, 4, 5, 255])
    if field == "precision":
        out[sof + 4] = rng.choice([0, 12, 16])
    return bytes(out)


def _gif_header(data: bytes, rng: random.Random) -> bytes:
    if data[:3] != b"GIF":
        return _flip_bits(data, rng)
    out = bytearray(data)
    # Logical screen size at 6..9; the first image descriptor's size after its ',' separator.
    target = 6 if rng.random() < 0.5 else max(6, data.find(b",") + 5)
    struct.pack_into("<HH", out, target, rng.choice(_SIDES), rng.choice(_SIDES))
    return bytes(out)


def _webp_header(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    vp8x = data.find(b"VP8X")
    if vp8x > 0 and rng.random() < 0.5:
        # Canvas size minus one, 24-bit little-endian, at 24..29 of the VP8X chunk.
        for offset in (vp8x + 12, vp8x + 15):
            out[offset : offset + 3] = rng.choice(_SIDES).to_bytes(4, "little")[:3]
        return bytes(out)
    vp8 = data.find(b"VP8 ")
    if vp8 > 0:  # lossy: 14-bit width and height after the start code
        struct.pack_into(
            "<HH", out, vp8 + 14, rng.choice(_SIDES) & 0x3FFF, rng.choice(_SIDES) & 0x3FFF
        )
        return bytes(out)
    return _overwrite_run(data, rng)


def _tiff_header(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the value of one of the first IFD's size or layout tags."""
    if data[:4] != b"II*\x00":
        return _flip_bits(data, rng)
    out = bytearray(data)
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    wanted = {256, 257, 258, 277, 278, 279, 273, 339}  # sizes, bits, samples, strips, format
    entries = [ifd + 2 + 12 * i for i in range(count)]
    entries = [e for e in entries if struct.unpack_from("<H", data, e)[0] in wanted] or entries
    entry = rng.choice(entries)
    struct.pack_into("<I", out, entry + 8, rng.choice(_SIDES + (2**31, 2**32 - 1)))
    return bytes(out)


def _avif_header(data: bytes, rng: random.Random) -> bytes:
    ispe = data.find(b"ispe")
    if ispe < 0:
        return _flip_bits(data, rng)
    out = bytearray(data)
    struct.pack_into(">II", out, ispe + 8, rng.choice(_SIDES), rng.choice(_SIDES))
    return bytes(out)


HEADER_EDITS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "jpeg": _jpeg_header,
    "png": _png_header,
    "gif": _gif_header,
    "webp": _webp_header,
    "tiff": _tiff_header,
    "avif": _avif_header,
}
GENERIC = (_flip_bits, _overwrite_run, _truncate, _truncate_keep_end, _insert, _repeat_slice)


def mutants(seed_name: str, data: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``count`` mutants of ``data``, the same ones for the same seed; a third are header edits.
    Names say what was done, so a failure can be reproduced."""
    rng = random.Random(f"{seed}:{seed_name}")
    header_edit = HEADER_EDITS[seed_name.split("-")[0]]
    for index in range(count):
        mutate = header_edit if index % 3 == 0 else rng.choice(GENERIC)
        mutated = mutate(data, rng)
        if rng.random() < 0.2:  # sometimes a second, different mutation on top
            mutated = rng.choice(GENERIC)(mutated, rng)
        yield f"{seed_name}#{index}:{mutate.__name__.lstrip('_')}", mutated
