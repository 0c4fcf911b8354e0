"""Odd and broken sources through the engine: every band count and sample format is handled,
corrupt data fails as the source's fault on both RPCs, a JPEG whose scan ends early is refused,
an encoder's limit is the result's fault, our own failures are INTERNAL, and a result too big
for one response is refused instead of failing in gRPC."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import pyvips

from tests.images import from_array, jpeg, png, request, solid, textured
from tests.test_engine import RedBlockDetector, configured  # noqa: F401 (fixture)
from tests.test_engine import make_engine as any_engine  # noqa: F401 (fixture)
from imagesvc import vips
from imagesvc.engine import Engine
from imagesvc.errors import (
    ImageDecodeFailed,
    ProcessingFailed,
    ResponseTooLarge,
    ResultUnencodable,
)
from imagesvc.ops import registry
from imagesvc.options import parse_process_request
from imagesvc.v1 import image_service_pb2 as pb


@pytest.fixture
def make_engine(any_engine):  # noqa: F811 (the imported fixture, by name)
    """Engines with one worker and a detector that finds red blocks (tests/test_engine.py)."""
    return lambda **overrides: any_engine(RedBlockDetector(), workers=1, **overrides)


async def process(engine: Engine, msg: pb.ProcessImageRequest):
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    return await engine.process(parsed, time.monotonic() + 30)


def op(**kwargs) -> pb.Operation:
    return pb.Operation(**kwargs)


# --- Sources with odd bands and sample formats ----------------------------------------------------


def tiff(bands: int, interpretation: str, band_format: str, size=(90, 60)) -> bytes:
    image = (pyvips.Image.black(*size, bands=bands) + 100).cast(band_format)
    return image.copy(interpretation=interpretation).tiffsave_buffer()


ODD_TIFFS = [
    (5, "srgb", "uchar"),  # RGB + alpha + one extra band
    (6, "srgb", "ushort"),
    (2, "multiband", "uchar"),
    (3, "multiband", "float"),
    (1, "b-w", "float"),
    (4, "cmyk", "uchar"),
    (5, "cmyk", "uchar"),
    (3, "lab", "float"),
    (3, "srgb", "char"),
    (3, "srgb", "int"),
    (7, "multiband", "short"),
    (1, "multiband", "uint"),
]
EVERY_KIND_OF_STEP = [
    [op(resize=pb.Resize(width=40))],
    [op(background=pb.Background(color=pb.Color(red=200)))],
    [op(crop=pb.Crop(width=30, height=30, gravity=pb.Gravity(smart=pb.SmartGravity())))],
    [op(blur=pb.Blur(sigma=2)), op(sharpen=pb.Sharpen(sigma=1))],
    [op(rotate=pb.Rotate(angle=90)), op(pixelate=pb.Pixelate(size=4))],
    [op(draw_detections=pb.DrawDetections())],
]


@pytest.mark.parametrize("bands, interpretation, band_format", ODD_TIFFS)
def test_normalise_gives_every_step_grey_or_srgb_with_at_most_one_alpha(
    bands, interpretation, band_format
):
    loaded = pyvips.Image.new_from_buffer(tiff(bands, interpretation, band_format), "")
    image = vips.normalise(loaded)
    assert image.bands in (1, 2, 3, 4)
    assert image.format in ("uchar", "ushort")
    assert image.interpretation in ("srgb", "rgb16", "b-w", "grey16")
    assert bool(image.hasalpha()) == bool(loaded.hasalpha())
    image.avg()  # computes


@pytest.mark.parametrize("bands, interpretation, band_format", ODD_TIFFS)
@pytest.mark.parametrize("ops", EVERY_KIND_OF_STEP, ids=lambda ops: ops[0].WhichOneof("op"))
async def test_odd_tiffs_go_through_every_kind_of_step(
    make_engine, bands, interpretation, band_format, ops
):
    data = tiff(bands, interpretation, band_format)
    for fmt in (pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_JPEG):
        result = await process(make_engine(), request(data, ops, format=fmt))
        decoded = pyvips.Image.new_from_buffer(result.data, "")
        assert (decoded.width, decoded.height) == (result.width, result.height)


@pytest.mark.parametrize("bands, interpretation, band_format", ODD_TIFFS[:6])
async def test_odd_tiffs_are_described_and_detected_on(
    make_engine, bands, interpretation, band_format
):
    result = await make_engine().describe(
        tiff(bands, interpretation, band_format), True, time.monotonic() + 30
    )
    assert (result.width, result.height) == (90, 60)
    assert result.degradations == ()


# --- Corrupt sources: the same answer on both RPCs ------------------------------------------------


def png_with_bad_ihdr_crc() -> bytes:
    data = bytearray(png(textured(200, 150)))
    data[29] ^= 0xFF  # the IHDR chunk's CRC (8 signature + 4 length + 4 type + 13 data)
    return bytes(data)


def truncated_interlaced_png() -> bytes:
    data = from_array(textured(300, 200)).pngsave_buffer(interlace=True)
    return data[: len(data) // 2]


def jpeg_with_short_scan() -> bytes:
    """A JPEG whose frame header claims 1600x1200 but whose scan holds 400x300 worth of data,
    then ends properly: libjpeg only warns ("premature end of data segment") and paints the
    rest grey."""
    data = bytearray(jpeg(textured(400, 300)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 1200, 1600)
    return bytes(data)


CORRUPT = {
    "png with a bad IHDR CRC": png_with_bad_ihdr_crc,
    "truncated interlaced png": truncated_interlaced_png,
    "jpeg with a short scan": jpeg_with_short_scan,
}


@pytest.mark.parametrize("name", CORRUPT)
async def test_corrupt_sources_fail_as_decode_failures_on_both_rpcs(make_engine, name):
    data = CORRUPT[name]()
    with pytest.raises(ImageDecodeFailed):
        await process(make_engine(), request(data, [op(resize=pb.Resize(width=100))]))
    with pytest.raises(ImageDecodeFailed):
        await process(make_engine(), request(data, [op(rotate=pb.Rotate(angle=90))]))
    with pytest.raises(ImageDecodeFailed):
        await make_engine().describe(data, True, time.monotonic() + 30)


async def test_a_short_scan_is_accepted_when_jpeg_warnings_are_allowed(make_engine):
    # The setting that refuses it: without it, libvips renders the missing rows grey.
    engine = make_engine(fail_on_warning_formats=())
    result = await process(engine, request(jpeg_with_short_scan(), []))
    grey = pyvips.Image.new_from_buffer(result.data, "").numpy().astype(int)
    assert (np.abs(grey[600:] - 128) < 8).mean() > 0.9


# --- Failures that are not the source's ---------------------------------------------------------


async def test_an_encoder_limit_is_the_results_fault_not_the_sources(make_engine):
    # 1x16384 is within IMAGESVC_MAX_RESULT_DIMENSION, beyond WebP's 16383.
    strip = png(solid(1, 16384))
    with pytest.raises(ResultUnencodable) as caught:
        await process(make_engine(), request(strip, [], format=pb.IMAGE_FORMAT_WEBP))
    assert caught.value.metadata["limit"] == "16383"


async def test_a_failure_of_ours_on_a_sound_source_is_internal(make_engine, monkeypatch):
    # An operation that fails on a valid image with an error text naming no codec: the engine
    # decodes the source alone, which works, so the failure is ours.
    def broken(image, options, ctx):
        return image.extract_area(0, 0, image.width + 10, image.height)

    spec = registry.OPS["flip"]
    monkeypatch.setitem(registry.OPS, "flip", registry.OpSpec(spec.parse, broken, spec.estimate))
    with pytest.raises(ProcessingFailed):
        await process(make_engine(), request(png(textured(64, 48)), [op(flip=pb.Flip())]))


async def test_a_result_too_big_for_one_response_is_refused(make_engine):
    noise = np.random.default_rng(2).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    engine = make_engine(max_message_bytes=256 * 1024)
    with pytest.raises(ResponseTooLarge) as caught:
        await process(engine, request(png(noise), [], format=pb.IMAGE_FORMAT_PNG))
    assert int(caught.value.metadata["bytes"]) > int(caught.value.metadata["limit_bytes"])
    assert caught.value.metadata["limit_bytes"] == str(256 * 1024 - 64 * 1024)
