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
