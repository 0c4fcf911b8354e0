"""The encoder facade: today's encode through it, PNG auto-quantization, autoquality, max_bytes,
best format and the report (decoded and checked; no byte comparisons, no timings)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyvips
import pytest

from imagesvc.encoding import encoder as encoder_module
from imagesvc.encoding import sample
from imagesvc.encoding.dssim import DssimReference
from imagesvc.encoding.encoder import (
    AUTOQUALITY_ML_UNAVAILABLE,
    AUTOQUALITY_SKIPPED,
    encode_output,
    png_palette_colors,
)
from imagesvc.encoding.savers import png_palette_size
from imagesvc.encoding.search import GuessHistory
from imagesvc.encoding.spec import AutoqualitySpec, EncodingSpec, PngSpec
from imagesvc.options import OutputSpec
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb
from tests.encoding.test_best_format import flat_synthetic, screenshot
from tests.images import decode, from_array, loader_of, ssim, textured, to_array

LOADERS = {
    "jpeg": "jpegload_buffer",
    "png": "pngload_buffer",
    "webp": "webpload_buffer",
    "avif": "heifload_buffer",
    "gif": "gifload_buffer",
    "tiff": "tiffload_buffer",
}


def photo(width: int = 96, height: int = 72) -> pyvips.Image:
    return from_array(textured(width, height))


def spec(settings: Settings | None = None, **changes) -> EncodingSpec:
    return replace(EncodingSpec.from_settings(settings or Settings()), **changes)


def autoquality(method: str, target: float = 0.02, **changes) -> AutoqualitySpec:
    base = EncodingSpec.from_settings(Settings()).autoquality
    return replace(base, method=method, target=target, **changes)


def out(fmt, quality=None, **encoding) -> OutputSpec:
    return OutputSpec(fmt, quality, encoding=spec(**encoding) if encoding else None)


def encode(image, output, source_format="png", source_palette=None, settings=None, **kw):
    return encode_output(image, output, source_format, source_palette, settings or Settings(), **kw)


def colours(image: pyvips.Image) -> int:
    pixels = to_array(image)
    return len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0))


# --- today's encode, through the facade ----------------------------------------------------


@pytest.mark.parametrize("fmt", list(LOADERS))
def test_each_format_as_before(fmt):
    image = photo(64, 48)
    result = encode(image, OutputSpec(fmt, None))
    assert result.format == fmt
    assert loader_of(result.data) == LOADERS[fmt]
    decoded = decode(result.data)
    assert (decoded.width, decoded.height) == (64, 48)
    if fmt in ("png", "tiff"):
        assert np.array_equal(to_array(decoded)[:, :, :3], to_array(image))
    else:
        assert ssim(to_array(decoded)[:, :, :3], to_array(image)) > 0.6
    report = result.report
    assert (report.method, report.encodes, report.target_met) == ("none", 1, True)
    assert result.degradations == []


@pytest.mark.parametrize(
    ("source_format", "expected"), [("png", "png"), ("webp", "webp"), ("heic", "jpeg")]
)
def test_format_defaults_to_the_source_format(source_format, expected):
    result = encode(photo(8, 8), OutputSpec(None, None), source_format)
    assert result.format == expected


def test_quality_precedence_and_report():
    image = photo()
    settings = Settings(quality=90, format_quality={"webp": 20})
    assert encode(image, OutputSpec("jpeg", 10), settings=settings).report.quality == 10
    got = encode(image, OutputSpec("jpeg", None, {"jpeg": 30}), settings=settings)
    assert got.report.quality == 30
    assert encode(image, OutputSpec("webp", None), settings=settings).report.quality == 20
    assert encode(image, OutputSpec("jpeg", None), settings=settings).report.quality == 90
    low = encode(image, OutputSpec("jpeg", 10), settings=settings)
    high = encode(image, OutputSpec("jpeg", 95), settings=settings)
    assert len(low.data) < len(high.data)


def test_alpha_is_flattened_for_jpeg_and_kept_for_webp():
    pixels = np.zeros((20, 30, 4), np.uint8)
    pixels[:, :, 0] = 255  # transparent red
    image = from_array(pixels)
    jpeg = to_array(decode(encode(image, OutputSpec("jpeg", 95)).data)).astype(int)
    assert jpeg.shape[2] == 3 and (np.abs(jpeg - 255) <= 3).all()
    webp = to_array(decode(encode(image, OutputSpec("webp", None)).data))
    assert webp.shape[2] == 4 and (webp[:, :, 3] == 0).all()


def test_strip_metadata_and_the_options_of_the_request():
    image = photo().copy()
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "Ada Lovelace")
    source = decode(image.jpegsave_buffer())
    stripped = encode(source, OutputSpec("jpeg", None), "jpeg")
    kept = encode(source, OutputSpec("jpeg", None, strip_metadata=False), "jpeg")
    assert not decode(stripped.data).get_typeof("exif-data")
    assert "Ada Lovelace" in decode(kept.data).get("exif-ifd0-Artist")


def test_per_format_options_reach_the_saver():
    settings = Settings(jpeg_progressive=True, webp_compression="lossless")
    image = photo()
    jpeg = encode(image, OutputSpec("jpeg", None), settings=settings)
    assert decode(jpeg.data).get("interlaced") == 1
    webp = encode(image, OutputSpec("webp", None), settings=settings)
    assert np.array_equal(to_array(decode(webp.data)), to_array(image))
    assert webp.report.lossless and webp.report.quality == 0


# --- PNG auto-quantization ---------------------------------------------------------------------


def paletted_source(entries: int = 16) -> pyvips.Image:
    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (entries, 3), dtype=np.uint8)
    return from_array(palette[rng.integers(0, entries, (60, 80))])


def test_auto_quantizes_a_paletted_source_to_its_palette_size():
    source = paletted_source(16)
    resized = source.resize(1.7)  # new, interpolated colours
    result = encode(resized, OutputSpec("png", None), "png", source_palette=16)
    decoded = decode(result.data)
    assert decoded.get("palette") == 1
    assert colours(decoded) <= 16
    assert result.report.palette_colors == png_palette_size(result.data) <= 16
    assert not result.report.lossless


def test_auto_keeps_a_full_colour_source_full_colour():
    image = photo()
    result = encode(image, OutputSpec("png", None), "png", source_palette=None)
    assert not decode(result.data).get_typeof("palette")
    assert np.array_equal(to_array(decode(result.data)), to_array(image))
    assert result.report.palette_colors == 0 and result.report.lossless


def test_auto_quantizes_a_gif_source_to_png():
    source = paletted_source(32)
    result = encode(source, OutputSpec("png", None), "gif", source_palette=32)
    assert decode(result.data).get("palette") == 1
    assert colours(decode(result.data)) <= 32
    # A source that still fits its palette comes out exact.
    assert np.array_equal(to_array(decode(result.data)), to_array(source))


def test_always_and_never():
    image = photo()
    always = encode(image, out("png", png=PngSpec(quantize="always", colors=8)))
    assert colours(decode(always.data)) <= 8 and always.report.palette_colors <= 8
    default = encode(image, out("png", png=PngSpec(quantize="always")))
    assert decode(default.data).get("palette") == 1  # IMAGESVC_PNG_QUANTIZATION_COLORS: 256
    never = encode(image, out("png", png=PngSpec(quantize="never")), source_palette=16)
    assert not decode(never.data).get_typeof("palette")


def test_palette_rules():
    s = spec()
    assert png_palette_colors(s, None) is None
    assert png_palette_colors(s, 64) == 64
    assert png_palette_colors(replace(s, png=PngSpec("auto", colors=10)), 64) == 10
    assert png_palette_colors(replace(s, png=PngSpec(quantize="always")), None) == 256
    assert png_palette_colors(replace(s, png=PngSpec(quantize="never")), 64) is None


# --- autoquality and max_bytes -----------------------------------------------------------------


def test_dssim_autoquality_reports_what_it_measured():
    image = photo(160, 120)
    result = encode(image, out("jpeg", autoquality=autoquality("dssim", 0.02)))
    report = result.report
    assert report.method == "dssim" and report.encodes >= 1
    low, high = EncodingSpec.from_settings(Settings()).autoquality.bounds("jpeg")
    assert low <= report.quality <= high
    measured = DssimReference(image).dssim_of(result.data)
    assert report.achieved_dssim == pytest.approx(measured, abs=1e-6)
    assert report.target_met == (measured <= 0.02 + 0.001)


def test_size_autoquality_fits_the_target():
    image = photo(160, 120)
    fixed = encode(image, OutputSpec("webp", 80))
    target = len(fixed.data) * 0.8
    aq = autoquality("size", target, ranges=(("webp", 10, 90),))
    result = encode(image, out("webp", autoquality=aq))
    assert len(result.data) <= target and result.report.target_met
    assert result.report.method == "size" and result.report.achieved_dssim == 0


def test_ml_without_a_predictor_falls_back_to_dssim():
    result = encode(photo(), out("webp", autoquality=autoquality("ml")))
    assert result.report.method == "dssim"
    assert [reason for reason, _ in result.degradations] == [AUTOQUALITY_ML_UNAVAILABLE]


def test_autoquality_skipped_above_its_resolution():
    aq = autoquality("dssim", max_resolution_mp=0.001)
    result = encode(photo(), out("jpeg", 55, autoquality=aq))
    assert [reason for reason, _ in result.degradations] == [AUTOQUALITY_SKIPPED]
    assert (result.report.method, result.report.quality, result.report.encodes) == ("none", 55, 1)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_max_bytes_lowers_the_quality_until_it_fits(fmt):
    image = photo(160, 120)
    fixed = encode(image, OutputSpec(fmt, 90))
    limit = len(fixed.data) // 2
    result = encode(image, out(fmt, 90, max_bytes=limit))
    assert len(result.data) <= limit
    assert result.report.target_met and result.report.quality < 90
    assert ssim(to_array(decode(result.data)), to_array(image)) > 0.3


def test_max_bytes_out_of_reach_returns_the_closest():
    image = photo(160, 120)
    result = encode(image, out("jpeg", 80, max_bytes=50))
    assert len(result.data) > 50
    assert not result.report.target_met
    assert result.report.quality < 80
    assert len(result.data) < len(encode(image, OutputSpec("jpeg", 80)).data)


def test_max_bytes_leaves_lossless_formats_alone():
    result = encode(photo(), out("png", max_bytes=10))
    assert np.array_equal(to_array(decode(result.data)), to_array(photo()))
    assert not result.report.target_met and result.report.encodes == 1


def test_avif_searches_at_low_effort_then_encodes_once_at_the_requested_one(monkeypatch):
    efforts = []
    real = encoder_module.save

    def spy(image, params, keep):
        efforts.append(params.effort)
        return real(image, params, keep)

    monkeypatch.setattr(encoder_module, "save", spy)
    base = spec()
    s = replace(base, avif=replace(base.avif, effort=4), autoquality=autoquality("dssim"))
    result = encode_output(photo(), OutputSpec("avif", None, encoding=s), "png", None, Settings())
    assert efforts[-1] == 4 and set(efforts[:-1]) == {encoder_module.AVIF_SEARCH_EFFORT}
    assert result.report.encodes == len(efforts)
    assert result.report.achieved_dssim == pytest.approx(
        DssimReference(photo()).dssim_of(result.data), abs=1e-6
    )


def test_kill_check_runs_before_every_encode_and_stops_the_search():
    calls = []
    result = encode(
        photo(), out("jpeg", autoquality=autoquality("dssim")), kill_check=lambda: calls.append(1)
    )
    # Before every encode, and (DSSIM being numpy) inside every measure too.
    assert len(calls) > result.report.encodes

    class Stop(Exception):
        pass

    def stop_after_one():
        calls.append(1)
        if len(calls) > 1:
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        encode(photo(), out("jpeg", 80, max_bytes=50), kill_check=stop_after_one)


def test_watch_names_the_in_memory_copy():
    watched = []

    def watch(image):
        watched.append(image)
        return image

    encode(photo(), OutputSpec("jpeg", None), watch=watch)
    assert watched == []  # one save, streamed from the caller's image
    encode(photo(), out("jpeg", autoquality=autoquality("dssim")), watch=watch)
    assert len(watched) == 1


def test_history_learns_from_searches():
    history = GuessHistory()
    for _ in range(2):
        result = encode(photo(), out("webp", autoquality=autoquality("dssim")), history=history)
        assert result.report.method == "dssim"
    assert len(history) == 1


@pytest.mark.parametrize("method", ["dssim", "size"])
def test_autoquality_samples_a_large_image_first(monkeypatch, method):
    saved = []
    real = encoder_module.save

    def spy(image, params, keep):
        saved.append((image.width, image.height))
        return real(image, params, keep)

    monkeypatch.setattr(encoder_module, "save", spy)
    image = photo(512, 384)
    target = 0.012 if method == "dssim" else 512 * 384 * 0.8 / 8
    aq = autoquality(method, target, ranges=(("jpeg", 30, 95),))
    result = encode(image, out("jpeg", autoquality=aq))
    across, down = sample.grid_for(512, 384)
    mosaic = (across * sample.TILE, down * sample.TILE)
    full = [size for size in saved if size == (512, 384)]
    # Only the full-size saves are the result's encodes; the mosaic's (and, for sizes, the
    # corner's, once) are the estimate's.
    assert result.report.encodes == len(full) >= 1
    assert saved.count(mosaic) >= 1
    corner = (sample.CORNER, sample.CORNER)
    assert saved.count(corner) == (1 if method == "size" else 0)
    assert len(saved) == len(full) + saved.count(mosaic) + saved.count(corner)
    if method == "dssim":
        measured = DssimReference(image).dssim_of(result.data)
        assert measured <= 0.013 and result.report.target_met
    else:
        assert len(result.data) <= target and result.report.target_met


# --- best format ---------------------------------------------------------------------------------


def best(**encoding) -> OutputSpec:
    return OutputSpec("best", None, encoding=spec(**encoding))


@pytest.mark.parametrize("make", [flat_synthetic, screenshot])
def test_best_picks_a_lossless_format_for_a_synthetic_image(make):
    image = make()
    result = encode(image, best(best_candidates=("jpeg", "png", "webp", "avif")))
    assert result.format in ("png", "webp")
    decoded = to_array(decode(result.data))[:, :, :3]
    assert np.abs(decoded.astype(int) - to_array(image)).max() <= 8  # (near-)lossless
    report = result.report
    assert report.lossless or report.palette_colors or report.near_lossless
    sizes = [c.size_bytes for c in report.candidates]
    assert sizes == sorted(sizes) and sizes[0] == len(result.data)
    assert {c.format for c in report.candidates} <= {"png", "webp"}
    assert report.encodes == len(report.candidates)


def test_best_quantizes_png_for_a_flat_image():
    result = encode(flat_synthetic(), best(best_candidates=("png",)))
    assert result.format == "png"
    assert decode(result.data).get("palette") == 1
    assert 0 < result.report.palette_colors <= 256
    assert np.array_equal(to_array(decode(result.data)), to_array(flat_synthetic()))


def test_best_picks_a_lossy_format_for_a_photo():
    image = photo(200, 150)
    result = encode(image, best())
    assert result.format in ("jpeg", "webp", "avif")
    report = result.report
    assert not report.lossless and report.quality > 0
    assert [c.format for c in report.candidates] != []
    assert {c.format for c in report.candidates} == {"jpeg", "webp", "avif"}
    sizes = [c.size_bytes for c in report.candidates]
    assert sizes == sorted(sizes) and sizes[0] == len(result.data)
    assert ssim(to_array(decode(result.data))[:, :, :3], to_array(image)) > 0.6


def test_best_adds_png_for_alpha():
    pixels = np.concatenate([textured(120, 90), np.full((90, 120, 1), 200, np.uint8)], axis=2)
    result = encode(from_array(pixels), best(best_candidates=("jpeg", "webp")))
    assert "png" in {c.format for c in result.report.candidates}
    if result.format != "jpeg":
        assert to_array(decode(result.data)).shape[2] == 4


def test_best_with_autoquality_searches_each_lossy_candidate():
    result = encode(photo(160, 120), best(autoquality=autoquality("dssim")))
    assert result.report.method == "dssim"
    assert result.report.encodes >= len(result.report.candidates)


def test_best_honours_max_bytes():
    image = photo(200, 150)
    limit = len(encode(image, OutputSpec("webp", 79)).data) // 2
    result = encode(image, best(max_bytes=limit))
    assert len(result.data) <= limit and result.report.target_met


def test_best_above_its_resolution_tries_the_first_candidate_only():
    settings = Settings(best_format_max_resolution_mp=0.001)
    result = encode(photo(), best(best_candidates=("webp", "jpeg")), settings=settings)
    assert result.format == "webp"
    assert [c.format for c in result.report.candidates] == ["webp"]


def test_report_to_proto():
    result = encode(photo(), best())
    message = result.report.to_proto()
    assert isinstance(message, pb.EncodingReport)
    assert message.method == pb.AUTOQUALITY_METHOD_NONE
    assert len(message.candidates) == 3
    assert message.candidates[0].size_bytes == len(result.data)


def test_autoquality_degradations_only_where_autoquality_applies():
    aq = autoquality("ml", max_resolution_mp=0.001)
    assert encode(photo(), out("png", autoquality=aq)).degradations == []
    lossless = spec(autoquality=aq)
    lossless = replace(lossless, webp=replace(lossless.webp, compression="lossless"))
    result = encode(photo(), OutputSpec("webp", None, encoding=lossless))
    assert result.degradations == [] and result.report.method == "none"


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_a_flat_image_whose_dssim_is_zero_is_searched(fmt):
    # Encodes of a flat grey image decode to the same pixels: DSSIM 0 at every quality, for
    # the sample estimate too (the image is large enough to be sampled). Found by the ML
    # bench on a flat wallpaper: the search divided by the DSSIM.
    image = from_array(np.full((400, 400, 3), 118, np.uint8))
    aq = autoquality("dssim", 0.01, ranges=((fmt, 30, 95),))
    result = encode(image, out(fmt, autoquality=aq))
    assert result.report.target_met and result.report.quality == 30
    assert decode(result.data).width == 400
