"""libvips setup: loader allowlist, format sniffing and error classification."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyvips

from tests.images import from_array, jpeg, png_bomb, solid
from imagesvc import vips
from imagesvc.errors import ImageDecodeFailed, ImageFormatUnrecognized, ImageFormatUnsupported
from imagesvc.errors import ProcessingFailed
from imagesvc.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def configured():
    vips.configure(Settings())
    yield
    vips.configure(Settings())


def encoded(fmt: str) -> bytes:
    image = from_array(solid(16, 12, (200, 30, 60)))
    if fmt == "avif":
        return image.heifsave_buffer(compression="av1")
    return image.write_to_buffer(f".{fmt}")


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "tiff", "avif"])
def test_loader_for_each_allowed_format(fmt):
    data = encoded(fmt)
    assert vips.loader_for(data) == fmt
    assert vips.sniff_format(data) == fmt


def test_big_endian_tiff_is_recognised():
    data = from_array(solid(4, 4)).tiffsave_buffer(bigtiff=False)
    assert vips.sniff_format(b"MM\x00*" + data[4:]) == "tiff"


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (SVG, "svg"),
        (b"  <svg xmlns='http://www.w3.org/2000/svg'></svg>", "svg"),
        (b"BM" + bytes(60), "bmp"),
        (b"%PDF-1.7\n" + bytes(40), "pdf"),
        (b"8BPS" + bytes(40), "psd"),
        (b"\x00\x00\x01\x00" + bytes(40), "ico"),
        (b"\xff\x0a" + bytes(40), "jxl"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(40), "jxl"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(40), "heic"),
    ],
)
def test_known_but_unaccepted_formats_are_unsupported(data, name):
    assert vips.sniff_format(data) == name
    with pytest.raises(ImageFormatUnsupported) as caught:
        vips.loader_for(data)
    assert caught.value.metadata == {"format": name}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world" * 10,
        np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b'<?xml version="1.0"?><html></html>',
        b"P6\n4 4\n255\n" + bytes(48),  # PPM: libvips could load it, but it is not allowed
    ],
)
def test_non_images_are_unrecognized(data):
    assert vips.sniff_format(data) is None
    with pytest.raises(ImageFormatUnrecognized):
        vips.loader_for(data)


def test_allowlist_blocks_the_other_loaders():
    png = encoded("png")
    try:
        vips.configure(Settings(source_formats=("jpeg", "webp")))
        assert vips.loader_for(encoded("jpeg")) == "jpeg"
        with pytest.raises(ImageFormatUnsupported):
            vips.loader_for(png)
        with pytest.raises(pyvips.Error):
            pyvips.Image.new_from_buffer(png, "")  # blocked in libvips itself, not only by us
    finally:
        vips.configure(Settings())
    assert vips.loader_for(png) == "png"


def test_operation_cache_is_off():
    assert pyvips.cache_get_max() == 0


def test_truncated_sources_classify_as_decode_failures():
    for data in (jpeg(solid(64, 64)), encoded("webp")):
        broken = data[: len(data) // 2]
        with pytest.raises(pyvips.Error) as caught:
            pyvips.Image.new_from_buffer(broken, "", access="sequential", fail_on="error").avg()
        error = vips.classify(caught.value)
        assert isinstance(error, ImageDecodeFailed)
        assert error.message.startswith("the source image could not be decoded")


def test_png_bomb_header_is_readable_without_decoding():
    image = pyvips.Image.new_from_buffer(png_bomb(60000, 60000), "", access="sequential")
    assert (image.width, image.height) == (60000, 60000)


def test_other_libvips_failures_are_processing_failures():
    with pytest.raises(pyvips.Error) as caught:
        from_array(solid(4, 4)).rot("d45")
    error = vips.classify(caught.value)
    assert isinstance(error, ProcessingFailed)
    assert error.reason == "PROCESSING_FAILED"


def test_avif_with_a_mif1_major_brand_is_still_avif():
    data = encoded("avif")
    assert data[4:8] == b"ftyp"
    size = int.from_bytes(data[:4], "big")
    brands = [data[i : i + 4] for i in range(16, size, 4)]
    assert b"avif" in brands
    # Same file, major brand rewritten to the generic one: the compatible brands still say AVIF.
    generic = data[:8] + b"mif1" + data[12:]
    assert vips.sniff_format(generic) == "avif"
    assert vips.loader_for(generic) == "avif"


def test_our_own_geometry_mistakes_are_not_blamed_on_the_source():
    with pytest.raises(pyvips.Error) as caught:
        from_array(solid(4, 4)).extract_area(2, 2, 10, 10)
    assert isinstance(vips.classify(caught.value), ProcessingFailed)


def test_libvips_info_lines_no_longer_reach_python_logging(caplog):
    # Each libvips log line is a callback into Python from a libvips thread (it takes the GIL);
    # a resize logs several INFO lines, which configure() keeps out of Python.
    caplog.set_level("DEBUG", logger="pyvips")
    image = from_array(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    image.resize(0.3, kernel="lanczos3").jpegsave_buffer(Q=80)
    assert not [r for r in caplog.records if r.name == "pyvips" and r.levelname == "INFO"]


def test_libvips_warnings_still_reach_python_logging(caplog):
    caplog.set_level("DEBUG", logger="pyvips")
    gif = from_array(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8))
    truncated = gif.gifsave_buffer()[:-10]
    pyvips.Image.new_from_buffer(truncated, "", fail_on="none").avg()
    warnings = [r for r in caplog.records if r.name == "pyvips" and r.levelname == "WARNING"]
    assert any("GIF" in r.getMessage() for r in warnings)


def test_log_filter_is_idempotent(caplog):
    vips.log_warnings_only()
    vips.log_warnings_only()
    test_libvips_warnings_still_reach_python_logging(caplog)


@pytest.mark.parametrize(
    "detail, site",
    [
        ("VipsJpeg: premature end of JPEG image\n", "load"),
        ("VipsJpeg: Corrupt JPEG data: premature end of data segment\n", "load"),
        ("vipspng: libpng read error\n", "load"),
        ("webp: unable to parse image\n", "load"),
        ("gifload_buffer: Invalid frame data\n", "load"),
        ("heif: Invalid input: Unspecified: Corrupt frame detected (2.0)\n", "load"),
        ("source: bad seek to 15887\nheif: Invalid input: Unexpected end of file\n", "load"),
        ("tiff2vips: samples out of range\n", "load"),
        ("webpsave: image too large\n", "save"),
        ("heifsave: image too large\n", "save"),
        ("gifsave_buffer: frame too large\n", "save"),
        ("VipsJpeg: Maximum supported image dimension is 65500 pixels\n", "save"),
        ("vips2png: unable to write to target target\n", "save"),
        ("rot: angle must be a multiple of 90\n", None),
        ("extract_area: bad extract area\n", None),
        ("", None),
    ],
)
def test_the_site_of_a_failure_comes_from_the_domain_of_its_first_line(detail, site):
    # Substrings are not enough: "webpsave" names a format and is an encoder.
    assert vips.failure_site(pyvips.Error("unable to call something", detail)) == site


@pytest.mark.parametrize(
    "site, reason",
    [
        ("load", "IMAGE_DECODE_FAILED"),
        ("save", "RESULT_UNENCODABLE"),
        ("process", "PROCESSING_FAILED"),
    ],
)
def test_classify_follows_the_site(site, reason):
    error = vips.classify(pyvips.Error("unable to call x", "x: something\n"), site)
    assert error.reason == reason
    assert error.message.endswith("x: something")


REENTRANT_WARNING = """
import logging
import numpy as np
import pyvips
from imagesvc import vips
from imagesvc.settings import Settings

vips.configure(Settings())
pixels = np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)
gif = pyvips.Image.new_from_array(pixels).gifsave_buffer()[:-10]


class Reentrant(logging.Handler):
    depth = 0

    def emit(self, record):
        if Reentrant.depth:
            return
        Reentrant.depth += 1
        try:  # a libvips warning from inside the log handler, on the same thread
            pyvips.Image.new_from_buffer(gif, "", fail_on="none").avg()
        finally:
            Reentrant.depth -= 1


logging.getLogger("pyvips").addHandler(Reentrant())
logging.getLogger("pyvips").setLevel(logging.WARNING)
pyvips.Image.new_from_buffer(gif, "", fail_on="none").avg()
print("survived")
"""


def test_a_libvips_warning_inside_the_log_handler_does_not_abort_the_process():
    # The fuzz suite found it: the garbage collector, run by the Python log handler's own
    # allocations, freed a failed JPEG loader, whose "read gave 10 warnings" GLib saw as a
    # recursive log message, which it treats as fatal (SIGABRT). Here the recursion is made
    # on purpose, in a child process.
    done = subprocess.run(
        [sys.executable, "-c", REENTRANT_WARNING],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "survived" in done.stdout
