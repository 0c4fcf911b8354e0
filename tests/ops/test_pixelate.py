"""pixelate: constant, grid-aligned blocks of the requested size holding the block's mean."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, to_array
from imagesvc.ops import pixelate
from imagesvc.ops.pixelate import PixelateOptions, mosaic
from imagesvc.v1 import image_service_pb2 as pb


def noise(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("width", "height", "size"), [(48, 32, 8), (50, 35, 8), (31, 17, 5)])
def test_blocks_are_constant_and_aligned(make_ctx, width, height, size):
    source = noise(width, height)
    out = pixelate.run(from_array(source), PixelateOptions(size), make_ctx(width, height))
    assert (out.width, out.height) == (width, height)
    pixels = to_array(out).astype(int)
    for top in range(0, height, size):
        for left in range(0, width, size):
            block = pixels[top : top + size, left : left + size]
            assert (block == block[0, 0]).all(), (left, top)
            if block.shape[:2] == (size, size):
                mean = source[top : top + size, left : left + size].reshape(-1, 3).mean(axis=0)
                assert np.abs(block[0, 0] - mean).max() <= 1.5  # libvips rounds per pass
    # Neighbouring blocks differ (noise has no two equal means), so blocks are not larger.
    assert (pixels[0, 0] != pixels[0, size]).any()
    assert (pixels[0, 0] != pixels[size, 0]).any()


def test_size_larger_than_the_image_gives_one_colour(make_ctx):
    out = pixelate.run(from_array(noise(20, 10)), PixelateOptions(500), make_ctx(20, 10))
    pixels = to_array(out)
    assert (out.width, out.height) == (20, 10)
    assert (pixels == pixels[0, 0]).all()


def test_size_one_is_a_no_op():
    image = from_array(noise(6, 6))
    assert mosaic(image, 1) is image


def test_alpha_band_is_kept(make_ctx):
    array = np.dstack([noise(16, 16), np.full((16, 16), 255, np.uint8)])
    out = pixelate.run(from_array(array), PixelateOptions(4), make_ctx(16, 16))
    assert out.bands == 4 and (to_array(out)[:, :, 3] == 255).all()


def test_parse(pctx):
    assert pixelate.parse(pb.Pixelate(size=8), "p", pctx) == PixelateOptions(8)
    for size in (0, 1, 1025):
        pixelate.parse(pb.Pixelate(size=size), "p.pixelate", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.pixelate.size"] * 3
