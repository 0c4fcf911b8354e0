"""background: flatten RGBA and grey+alpha onto a colour; images without alpha are untouched."""

from __future__ import annotations

import numpy as np
import pyvips

from tests.images import from_array, to_array
from imagesvc.ops import background
from imagesvc.ops.background import BackgroundOptions
from imagesvc.v1 import image_service_pb2 as pb

COLOUR = (200, 40, 90)


def rgba() -> np.ndarray:
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    array[:, :5, 3] = 0  # fully transparent strip
    array[:, 5:10, 3] = 255  # fully opaque strip
    return array


def test_rgba_is_composited_onto_the_colour(make_ctx):
    source = rgba()
    out = background.run(from_array(source), BackgroundOptions(COLOUR), make_ctx(30, 20))
    assert out.bands == 3 and not out.hasalpha()
    assert out.format == "uchar"
    alpha = source[:, :, 3:4] / 255.0
    expected = alpha * source[:, :, :3] + (1 - alpha) * np.array(COLOUR)
    assert np.abs(to_array(out).astype(float) - expected).max() <= 1.0
    assert (to_array(out)[:, :5] == COLOUR).all()
    assert (to_array(out)[:, 5:10] == source[:, 5:10, :3]).all()


def test_grey_alpha_is_composited_onto_the_colours_luminance(make_ctx):
    source = np.zeros((10, 10, 2), np.uint8)
    source[:, :, 0] = 30
    source[:, :5, 1] = 0
    source[:, 5:, 1] = 255
    out = background.run(from_array(source), BackgroundOptions(COLOUR), make_ctx(10, 10))
    pixels = to_array(out)
    assert out.bands == 1
    luminance = 0.2126 * COLOUR[0] + 0.7152 * COLOUR[1] + 0.0722 * COLOUR[2]
    assert abs(int(pixels[0, 0, 0]) - luminance) <= 1
    assert (pixels[:, 5:, 0] == 30).all()


def test_sixteen_bit_rgba_uses_a_sixteen_bit_colour(make_ctx):
    array = np.zeros((4, 4, 4), np.uint16)
    array[:2] = (1000, 2000, 3000, 0)  # transparent rows
    array[2:] = (1000, 2000, 3000, 65535)  # opaque rows
    image = pyvips.Image.new_from_array(array, interpretation="rgb16")
    out = background.run(image, BackgroundOptions((255, 128, 0)), make_ctx(4, 4))
    pixels = to_array(out)
    assert out.format == "ushort" and out.bands == 3
    assert tuple(pixels[0, 0]) == (65535, 128 * 257, 0)
    assert tuple(pixels[3, 3]) == (1000, 2000, 3000)


def test_image_without_alpha_is_returned_unchanged(make_ctx):
    image = from_array(np.full((5, 5, 3), 7, np.uint8))
    assert background.run(image, BackgroundOptions(COLOUR), make_ctx(5, 5)) is image


def test_parse(pctx):
    msg = pb.Background(color=pb.Color(red=1, green=2, blue=3))
    assert background.parse(msg, "b", pctx) == BackgroundOptions((1, 2, 3))
    background.parse(pb.Background(color=pb.Color(red=256, blue=999)), "p.background", pctx)
    assert [v.field for v in pctx.violations.items] == [
        "p.background.color.red",
        "p.background.color.blue",
    ]
