"""Every per-format option, checked on the decoded file (never on exact bytes): progressive
JPEG is progressive, subsampling is what was asked, a palette PNG is paletted with at most N
colours, lossless WebP is exact; the mozjpeg options change the file and it still decodes."""

from __future__ import annotations

import numpy as np
import pyvips
import pytest

from imagesvc.encoding.savers import (
    SaveParams,
    png_bit_depth,
    png_palette_size,
    prepare,
    save,
    source_palette,
)
from imagesvc.encoding.spec import AvifSpec, JpegSpec, PngSpec, WebpSpec
from tests.images import decode, from_array, ssim, textured, to_array


def photo(width: int = 96, height: int = 72) -> pyvips.Image:
    return from_array(textured(width, height))


def colours(image: pyvips.Image) -> int:
    pixels = to_array(image)
    return len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0))


def field(data: bytes, name: str):
    image = decode(data)
    return image.get(name) if image.get_typeof(name) else None


def av1_subsampling(data: bytes) -> tuple[int, int]:
    """(subsampling_x, subsampling_y) from the AVIF's av1C box (1, 1: 4:2:0; 0, 0: 4:4:4)."""
    at = data.find(b"av1C")
    assert at > 0, "no av1C box"
    flags = data[at + 4 + 2]
    return (flags >> 3) & 1, (flags >> 2) & 1


def riff_chunk(data: bytes) -> bytes:
    """The first chunk of a WebP after its VP8X header, if any: VP8 (lossy) or VP8L."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    offset = 12
    while offset + 8 <= len(data):
        kind = data[offset : offset + 4]
        if kind in (b"VP8 ", b"VP8L"):
            return kind
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        offset += 8 + size + (size & 1)
    raise AssertionError("no image chunk")


# --- JPEG -------------------------------------------------------------------------------------


def jpeg(image: pyvips.Image, quality: int = 80, **spec) -> bytes:
    return save(image, SaveParams("jpeg", quality, spec=JpegSpec(**spec)), "none")


def test_jpeg_baseline_and_progressive():
    image = photo()
    assert not field(jpeg(image), "interlaced")
    progressive = jpeg(image, progressive=True)
    assert field(progressive, "interlaced") == 1
    assert b"\xff\xc2" in progressive  # SOF2: progressive DCT


def test_jpeg_optimize_scans_implies_progressive():
    data = jpeg(photo(), optimize_scans=True)
    assert field(data, "interlaced") == 1


@pytest.mark.parametrize("quality", [50, 80])
def test_jpeg_subsampling_as_asked(quality):
    image = photo()
    assert field(jpeg(image, quality), "jpeg-chroma-subsample") == "4:2:0"
    assert field(jpeg(image, quality, no_subsample=True), "jpeg-chroma-subsample") == "4:4:4"


@pytest.mark.parametrize(
    "option",
    [
        {"trellis_quant": True},
        {"overshoot_deringing": True},
        {"optimize_scans": True},
        {"quant_table": 3},
        {"quant_table": 8},
    ],
)
def test_jpeg_mozjpeg_options_change_the_file_and_it_decodes(option):
    image = photo(128, 96)
    plain = jpeg(image, 75)
    tuned = jpeg(image, 75, **option)
    assert tuned != plain
    out = decode(tuned)
    assert (out.width, out.height) == (128, 96)
    assert ssim(to_array(out), to_array(image)) > 0.7


def test_jpeg_quant_tables_differ_from_each_other():
    image = photo(128, 96)
    sizes = {len(jpeg(image, 75, quant_table=t)) for t in range(9)}
    assert len(sizes) > 3


# --- PNG --------------------------------------------------------------------------------------


def png(image: pyvips.Image, colours: int | None = None, **spec) -> bytes:
    return save(image, SaveParams("png", palette_colors=colours, spec=PngSpec(**spec)), "none")


def test_png_full_colour_is_exact_and_not_paletted():
    image = photo()
    data = png(image)
    assert not field(data, "palette")
    assert png_palette_size(data) is None
    assert np.array_equal(to_array(decode(data)), to_array(image))


def test_png_interlaced():
    image = photo()
    assert not field(png(image), "interlaced")
    assert field(png(image, interlaced=True), "interlaced") == 1
    assert field(png(image, 16, interlaced=True), "interlaced") == 1


@pytest.mark.parametrize("n", [2, 4, 16, 256])
def test_png_quantized_is_paletted_with_at_most_n_colours(n):
    image = photo(128, 96)
    data = png(image, n)
    assert field(data, "palette") == 1
    assert field(data, "bits-per-sample") == png_bit_depth(n)
    assert png_palette_size(data) <= n
    assert colours(decode(data)) <= n


@pytest.mark.parametrize("n", [3, 5, 100, 200])
def test_png_quantized_to_a_count_between_bit_depths(n):
    # libimagequant fills the bit depth's 2^k entries; the saver merges down to n.
    image = photo(128, 96)
    data = png(image, n)
    assert field(data, "palette") == 1
    assert png_palette_size(data) <= n
    assert colours(decode(data)) <= n
    assert ssim(to_array(decode(data)), to_array(image)) > 0.3


def test_png_quantized_keeps_an_image_that_already_fits():
    rng = np.random.default_rng(2)
    palette = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    pixels = palette[rng.integers(0, 40, (50, 60))]
    data = png(from_array(pixels), 64)
    assert png_palette_size(data) <= 64
    assert np.array_equal(to_array(decode(data)), pixels)


def test_png_quantized_keeps_alpha():
    pixels = np.zeros((20, 30, 4), np.uint8)
    pixels[:, :15] = (255, 0, 0, 255)
    pixels[:, 15:] = (0, 0, 255, 0)
    out = to_array(decode(png(from_array(pixels), 4)))
    assert out.shape[2] == 4
    assert (out[:, :15, 3] == 255).all() and (out[:, 15:, 3] == 0).all()


# --- WebP -------------------------------------------------------------------------------------


def webp(image: pyvips.Image, quality: int = 80, **params) -> bytes:
    smart = params.pop("smart_subsample", False)
    return save(
        image,
        SaveParams("webp", quality, effort=4, spec=WebpSpec(smart_subsample=smart), **params),
        "none",
    )


def test_webp_lossless_is_exact():
    image = photo()
    data = webp(image, lossless=True)
    assert riff_chunk(data) == b"VP8L"
    assert np.array_equal(to_array(decode(data)), to_array(image))


def test_webp_near_lossless_is_vp8l_and_close():
    image = photo()
    data = webp(image, 60, near_lossless=True)
    assert riff_chunk(data) == b"VP8L"
    out = to_array(decode(data)).astype(int)
    assert np.abs(out - to_array(image)).max() <= 16
    assert ssim(to_array(decode(data)), to_array(image)) > 0.95


def test_webp_lossy_and_smart_subsample():
    image = photo(128, 96)
    plain = webp(image)
    assert riff_chunk(plain) == b"VP8 "
    smart = webp(image, smart_subsample=True)
    assert smart != plain
    assert riff_chunk(smart) == b"VP8 "
    assert ssim(to_array(decode(smart)), to_array(image)) > 0.7


# --- AVIF -------------------------------------------------------------------------------------


def avif(image: pyvips.Image, quality: int, subsample: str = "auto", effort=None) -> bytes:
    return save(
        image,
        SaveParams("avif", quality, effort=effort, spec=AvifSpec(subsample=subsample, effort=0)),
        "none",
    )


@pytest.mark.parametrize(
    ("subsample", "quality", "expected"),
    [("on", 95, (1, 1)), ("off", 50, (0, 0)), ("auto", 50, (1, 1)), ("auto", 95, (0, 0))],
)
def test_avif_subsampling_as_asked(subsample, quality, expected):
    data = avif(photo(), quality, subsample)
    assert av1_subsampling(data) == expected
    assert decode(data).get("vips-loader").startswith("heifload")


def test_avif_effort_is_passed_and_decodes():
    image = photo(128, 96)
    fast = avif(image, 60, effort=0)
    slow = avif(image, 60, effort=4)
    assert fast != slow
    for data in (fast, slow):
        assert ssim(to_array(decode(data)), to_array(image)) > 0.7


# --- prepare ----------------------------------------------------------------------------------


def rgba() -> pyvips.Image:
    pixels = np.zeros((10, 12, 4), np.uint8)
    pixels[:, :, 0] = 255  # transparent red
    return from_array(pixels)


def test_prepare_flattens_for_jpeg_only():
    flat, keep = prepare(rgba(), "jpeg", keep_icc=False, strip=True)
    assert flat.bands == 3 and keep == "none"
    assert (to_array(flat) == 255).all()  # onto white
    kept, _ = prepare(rgba(), "webp", keep_icc=False, strip=True)
    assert kept.bands == 4


def test_prepare_keep_values():
    image = photo()
    assert prepare(image, "png", keep_icc=True, strip=True)[1] == "icc"
    assert prepare(image, "png", keep_icc=False, strip=False)[1] == "all"


def test_prepare_makes_eight_bit():
    deep = pyvips.Image.new_from_array(
        np.full((4, 5, 3), 257 * 9, np.uint16), interpretation="rgb16"
    )
    image, _ = prepare(deep, "png", keep_icc=False, strip=True)
    assert (image.format, image.interpretation) == ("uchar", "srgb")


# --- source palette ---------------------------------------------------------------------------


def header(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_source(
        pyvips.Source.new_from_memory(data), "", access="sequential"
    )


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_source_palette_of_a_palette_png(depth):
    data = photo().pngsave_buffer(palette=True, bitdepth=depth)
    assert source_palette(header(data), "png") == 1 << depth
    assert source_palette(header(data), "png", data) == png_palette_size(data)


def test_source_palette_counts_the_plte_entries_when_given_the_bytes():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (20, 3), dtype=np.uint8)[rng.integers(0, 20, (30, 30))]
    data = from_array(pixels).pngsave_buffer(palette=True, bitdepth=8)
    assert png_palette_size(data) == 20
    assert source_palette(header(data), "png", data) == 20
    assert source_palette(header(data), "png") == 256


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_source_palette_of_a_gif(depth):
    data = photo().gifsave_buffer(bitdepth=depth)
    assert source_palette(header(data), "gif") == 1 << depth


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_no_source_palette_for_full_colour(fmt):
    image = photo()
    data = {"png": image.pngsave_buffer, "jpeg": image.jpegsave_buffer}.get(
        fmt, image.webpsave_buffer
    )()
    assert source_palette(header(data), fmt) is None


@pytest.mark.parametrize("effort", [0, 2])
def test_avif_quality_steps_are_the_encoders(effort):
    # Qualities of one step write the same file, and the next step another: the table the
    # quality search relies on to skip encodes, checked against the bundled encoder.
    import hashlib

    from imagesvc.encoding.savers import AVIF_QUALITY_STEPS, quality_step

    image = from_array(textured(64, 48))
    digests = {
        q: hashlib.sha256(image.heifsave_buffer(Q=q, compression="av1", effort=effort)).digest()
        for q in range(1, 101)
    }
    starts = [q for q in range(1, 101) if q == 1 or digests[q] != digests[q - 1]]
    assert tuple(starts) == AVIF_QUALITY_STEPS
    assert all(digests[q] == digests[quality_step("avif")(q)] for q in range(1, 101))
    assert quality_step("jpeg") is None and quality_step("webp") is None
