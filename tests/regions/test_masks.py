"""Region maps: mapping through geometry, labels, shares, the PNG."""

from __future__ import annotations

import numpy as np
import pyvips

from imagesvc.geometry import Affine
from imagesvc.regions import masks


def square_map() -> masks.RegionMap:
    """A 100x50 analysis map of a 400x200 source: person in x 20..60, y 10..40 (analysis
    pixels), its left half skin."""
    person = np.zeros((50, 100), np.float32)
    person[10:40, 20:60] = 1.0
    skin = np.zeros_like(person)
    skin[10:40, 20:40] = 1.0
    return masks.RegionMap(person, skin, (400, 200))


def test_identity_source_size_scales_the_analysis_map():
    person, skin = square_map().at(Affine(), 400, 200)
    assert person.shape == (200, 400)
    assert person[100, 160] == 1.0 and person[100, 60] == 0.0
    # Edges land where the source's are: analysis x 20 -> source x 80, within a pixel or two.
    row = person[100]
    inside = np.flatnonzero(row >= 0.5)
    assert abs(inside[0] - 80) <= 2 and abs(inside[-1] - 239) <= 2


def test_masks_follow_a_crop_and_a_flip():
    region = square_map()
    # Crop the source at (60, 20) to 200x160, then flip horizontally.
    crop = Affine.translate(-60, -20)
    flip = Affine(a=-1, c=200)
    person, skin = region.at(crop.then(flip), 200, 160)
    classes = masks.labels(person, skin)
    # Source (100, 100) is person and skin (analysis 25, 25): crop -> (40, 80), flip -> (160, 80).
    assert classes[80, 159] == masks.SKIN
    # Source (200, 100) is person, not skin (analysis 50, 25): -> (140, 80) -> (60, 80).
    assert classes[80, 60] == masks.CLOTHES
    # Source (300, 100) is background: -> (240, 80): cropped away; (0, 0) here is source (260, 20).
    assert classes[0, 0] == masks.BACKGROUND


def test_outside_the_source_is_background():
    person, _ = square_map().at(Affine.translate(500, 0), 100, 100)
    assert person.max() == 0.0


def test_shares_and_png_round_trip():
    region = square_map()
    classes = masks.labels(*region.at(Affine(), 400, 200))
    shares = masks.shares(classes)
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert abs(shares["skin"] - 0.12) < 0.01 and abs(shares["clothes"] - 0.12) < 0.01
    decoded = pyvips.Image.new_from_buffer(masks.to_png(classes), "")
    assert (decoded.width, decoded.height, decoded.bands) == (400, 200, 1)
    assert np.array_equal(decoded.numpy().reshape(200, 400), classes)
