"""Background pre-filters: the person is untouched, the background is filtered, no halo."""

from __future__ import annotations

import numpy as np
import pyvips
import pytest

from imagesvc.regions import prefilter
from tests.images import from_array, textured


def person_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[40:120, 60:140] = 1.0
    return mask


@pytest.mark.parametrize("method", prefilter.FILTERS)
def test_the_person_is_untouched_and_the_background_filtered(method):
    source = textured(200, 160)
    image = from_array(source)
    out = prefilter.prefilter(image, person_mask(160, 200), method, 3.0, 6.0).numpy()
    assert out.shape == source.shape and out.dtype == np.uint8
    person = (slice(40, 120), slice(60, 140))
    assert np.array_equal(out[person], source[person])
    background = (slice(0, 20), slice(0, 200))
    changed = np.abs(out[background].astype(int) - source[background]).mean()
    assert changed > 1.0
    # Filtering removes detail: the background's local variation drops.
    assert (
        np.abs(np.diff(out[background].astype(int), axis=1)).mean()
        < np.abs(np.diff(source[background].astype(int), axis=1)).mean()
    )


def test_the_filter_fades_in_outside_the_person():
    keep = prefilter.feathered_keep(person_mask(160, 200), 8.0).numpy().reshape(160, 200)
    row = keep[80]
    assert row[60] == 1.0 and row[139] == 1.0  # the person's edge pixels
    assert 0.0 < row[52] < 1.0  # inside the margin: blended
    assert row[30] < 0.01  # well outside: filtered
    assert np.all(np.diff(row[20:61]) >= -1e-6)  # rising towards the person, no ring


def test_alpha_is_kept_and_shapes_are_checked():
    rgba = np.dstack([textured(50, 40), np.full((40, 50), 77, np.uint8)])
    out = prefilter.prefilter(from_array(rgba), np.zeros((40, 50), np.float32), "median", 2, 4)
    assert out.bands == 4 and np.all(out.numpy()[..., 3] == 77)
    with pytest.raises(ValueError, match="mask is"):
        prefilter.prefilter(from_array(rgba), np.zeros((10, 10), np.float32), "median", 2, 4)
    with pytest.raises(ValueError, match="unknown background filter"):
        prefilter.filtered(pyvips.Image.black(4, 4), "sepia", 1.0)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 2), (5, 5)])
@pytest.mark.parametrize("method", prefilter.FILTERS)
def test_tiny_and_thin_images_are_filtered_without_error(size, method):
    """A median window larger than the image (libvips refuses it) shrinks to fit."""
    width, height = size
    source = textured(width, height)
    out = prefilter.prefilter(
        from_array(source), np.zeros((height, width), np.float32), method, 4.0, 8.0
    ).numpy()
    assert out.reshape(height, width, -1).shape == (height, width, 3)


def red_square_on_grey() -> tuple[np.ndarray, np.ndarray]:
    """A saturated red "person" on a grey, finely striped background."""
    array = np.full((160, 200, 3), 180, np.uint8)
    array[:, ::6] = 90
    array[40:120, 60:140] = (230, 20, 20)
    return array, person_mask(160, 200)


def test_a_defocus_spreads_no_person_colour_into_the_background():
    # The halo a plain blur makes: the person's red blurred into the background beside it.
    source, person = red_square_on_grey()
    ring = (slice(20, 36), slice(60, 140))  # 4-20 px above the person, outside the feather
    redness = {}
    for method in ("gaussian", "defocus"):
        out = prefilter.prefilter(from_array(source), person, method, 12.0, 4.0).numpy()
        assert np.array_equal(out[40:120, 60:140], source[40:120, 60:140])
        redness[method] = float(out[ring][..., 0].mean() - out[ring][..., 1].mean())
    assert redness["gaussian"] > 15
    assert abs(redness["defocus"]) < 2


def test_a_defocus_flattens_the_background_at_any_strength():
    source, person = red_square_on_grey()
    background = (slice(0, 30), slice(0, 200))
    before = np.abs(np.diff(source[background].astype(int), axis=1)).mean()
    spread = []
    for sigma in (3.0, 12.0, 48.0):
        out = prefilter.prefilter(from_array(source), person, "defocus", sigma, 4.0).numpy()
        spread.append(np.abs(np.diff(out[background].astype(int), axis=1)).mean())
    assert spread[0] < 0.5 * before and spread[2] <= spread[1] <= spread[0]
    # The stripes' mean survives (a blur, not a fill): 180 and 90, one column in six.
    assert abs(out[background].mean() - (5 * 180 + 90) / 6) < 4


def test_defocused_checks_the_mask_and_covers_a_person_filling_the_frame():
    source, _ = red_square_on_grey()
    with pytest.raises(ValueError, match="mask is"):
        prefilter.defocused(from_array(source), np.zeros((4, 4), np.float32), 8.0)
    everyone = np.ones((160, 200), np.float32)
    smooth = prefilter.defocused(from_array(source), everyone, 8.0)
    assert (smooth.width, smooth.height) == (200, 160)
    assert np.isfinite(smooth.numpy()).all()
    out = prefilter.prefilter(from_array(source), everyone, "defocus", 8.0, 4.0).numpy()
    assert np.array_equal(out, source)
