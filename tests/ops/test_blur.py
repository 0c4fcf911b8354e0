"""blur: a gaussian that softens edges, keeps flat areas and the mean, and does not bleed
colour out of transparent pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array, solid, to_array
from imagesvc.ops import blur
from imagesvc.ops.blur import BlurOptions
from imagesvc.v1 import image_service_pb2 as pb


def step_edge() -> np.ndarray:
    array = solid(80, 40, (20, 20, 20))
    array[:, 40:] = (230, 230, 230)
    return array


def edge_width(row: np.ndarray) -> int:
    """Pixels of the row strictly between the dark and the bright level."""
    return int(((row > 25) & (row < 225)).sum())


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_blur_widens_the_edge_with_sigma(make_ctx, sigma):
    out = to_array(blur.run(from_array(step_edge()), BlurOptions(sigma), make_ctx(80, 40)))
    row = out[20, :, 0].astype(int)
    assert edge_width(step_edge()[20, :, 0]) == 0
    assert edge_width(row) >= 2 * sigma
    # Monotonic ramp, far pixels untouched, the step's mid-point stays at the edge.
    assert (np.diff(row) >= 0).all()
    # (libvips' integer gaussian mask is off by up to ~1% for some sigmas, e.g. 230 -> 232 at 3)
    assert abs(row[0] - 20) <= 3 and abs(row[-1] - 230) <= 3
    assert abs(int(row[39]) + int(row[40]) - 250) <= 6


def test_more_sigma_blurs_more(make_ctx):
    soft = to_array(blur.run(from_array(step_edge()), BlurOptions(1.0), make_ctx(80, 40)))
    softer = to_array(blur.run(from_array(step_edge()), BlurOptions(4.0), make_ctx(80, 40)))
    assert edge_width(softer[20, :, 0]) > edge_width(soft[20, :, 0])
    assert (
        np.abs(np.diff(softer[20, :, 0].astype(int))).max()
        < np.abs(np.diff(soft[20, :, 0].astype(int))).max()
    )


def test_flat_image_stays_flat(make_ctx):
    out = blur.run(from_array(solid(30, 30, (5, 100, 200))), BlurOptions(2), make_ctx(30, 30))
    assert (to_array(out) == (5, 100, 200)).all()


def test_alpha_is_premultiplied(make_ctx):
    array = np.zeros((20, 40, 4), np.uint8)
    array[:, :20] = (255, 0, 0, 0)  # transparent red
    array[:, 20:] = (0, 0, 255, 255)
    out = blur.run(from_array(array), BlurOptions(3), make_ctx(40, 20))
    pixels = to_array(out)
    assert out.format == "uchar" and out.bands == 4
    assert pixels[:, :, 3].min() < 255  # the alpha edge is blurred too
    visible = pixels[:, :, 3] > 16
    assert pixels[:, :, 0][visible].max() <= 8


def test_parse(pctx):
    assert blur.parse(pb.Blur(sigma=2.5), "b", pctx) == BlurOptions(2.5)
    assert not pctx.violations.items
    for sigma in (0, -1, 101):
        blur.parse(pb.Blur(sigma=sigma), "p.blur", pctx)
    assert [v.field for v in pctx.violations.items] == ["p.blur.sigma"] * 3
