"""sharpen: raises contrast across edges, leaves flat areas alone, keeps the encoding."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, solid, ssim, textured, to_array
from imagesvc.ops import sharpen
from imagesvc.ops.sharpen import SharpenOptions
from imagesvc.v1 import image_service_pb2 as pb


def soft_edge(bands: int = 3) -> np.ndarray:
    """Dark to light over a 10 px ramp in the middle of a 80 px wide image."""
    ramp = np.clip((np.arange(80) - 35) / 10, 0, 1) * 140 + 60
    array = np.repeat(np.repeat(ramp[None, :, None], 40, axis=0), bands, axis=2)
    return array.round().astype(np.uint8)


def test_edge_contrast_rises(make_ctx):
    source = soft_edge()
    out = sharpen.run(from_array(source), SharpenOptions(1.5), make_ctx(80, 40))
    before, after = source[20, :, 1].astype(int), to_array(out)[20, :, 1].astype(int)
    # Overshoot: darker just before the ramp, lighter just after it.
    assert after[30:40].min() < before[30:40].min()
    assert after[45:55].max() > before[45:55].max()
    assert np.abs(np.diff(after)).max() > np.abs(np.diff(before)).max()
    # Far from the edge nothing changes (within rounding through LabS).
    assert np.abs(after[:15] - before[:15]).max() <= 2
    assert np.abs(after[-15:] - before[-15:]).max() <= 2


def test_flat_image_is_unchanged(make_ctx):
    image = from_array(solid(30, 30, (90, 120, 150)))
    out = sharpen.run(image, SharpenOptions(2), make_ctx(30, 30))
    assert np.abs(to_array(out).astype(int) - (90, 120, 150)).max() <= 2


@pytest.mark.parametrize("bands", [1, 3])
def test_keeps_the_size_format_and_interpretation(make_ctx, bands):
    array = textured(64, 48) if bands == 3 else textured(64, 48)[:, :, 1]
    image = from_array(array)
    out = sharpen.run(image, SharpenOptions(1), make_ctx(64, 48))
    assert (out.width, out.height, out.bands) == (64, 48, bands)
    assert out.format == "uchar"
    assert out.interpretation == image.interpretation
    # Still the same picture, but not identical.
    assert 0.8 < ssim(to_array(out), to_array(image)) < 1.0


def test_parse(pctx):
    assert sharpen.parse(pb.Sharpen(sigma=1.0), "s", pctx) == SharpenOptions(1.0)
    for sigma in (0, 21):
        sharpen.parse(pb.Sharpen(sigma=sigma), "p.sharpen", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.sharpen.sigma"] * 2
