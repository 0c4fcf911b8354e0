"""Best format's complexity measure and candidate list."""

from __future__ import annotations

import numpy as np
import pyvips
import pytest

from imagesvc.encoding.best_format import (
    COMPLEXITY_THRESHOLD,
    Candidate,
    Complexity,
    candidates,
    complexity,
    sample,
)
from tests.images import from_array, textured


def flat_synthetic(width: int = 320, height: int = 240) -> pyvips.Image:
    """Flat shapes on white: a few colours, sharp edges (a diagram, a logo)."""
    pixels = np.full((height, width, 3), 255, np.uint8)
    pixels[30:120, 40:200] = (220, 30, 30)
    pixels[90:210, 150:290] = (30, 60, 200)
    pixels[10:20, :] = (20, 20, 20)
    return from_array(pixels)


def screenshot(width: int = 480, height: int = 320) -> pyvips.Image:
    """Rectangles and anti-aliased text on a light background."""
    image = (pyvips.Image.black(width, height) + [245, 246, 248]).cast("uchar")
    image = image.copy(interpretation="srgb")
    image = image.draw_rect([40, 90, 160], 0, 0, width, 40, fill=True)
    text = pyvips.Image.text("Settings  Reports  <b>Dashboard</b>\n" * 6, dpi=110)
    ink = (pyvips.Image.black(text.width, text.height) + [20, 20, 20]).cast("uchar")
    region = image.crop(20, 60, text.width, text.height)
    mixed = ((region * (255 - text) + ink * text) / 255).cast("uchar")
    return image.insert(mixed, 20, 60).copy_memory()


def photo(width: int = 320, height: int = 240) -> pyvips.Image:
    return from_array(textured(width, height))


def noisy(width: int = 200, height: int = 150) -> pyvips.Image:
    rng = np.random.default_rng(7)
    base = np.full((height, width, 3), 180.0) + rng.normal(0, 6, (height, width, 3))
    return from_array(np.clip(base, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("make", [flat_synthetic, screenshot])
def test_synthetic_images_measure_under_the_threshold(make):
    measured = complexity(make())
    assert measured.value < COMPLEXITY_THRESHOLD
    assert measured.synthetic
    assert measured.dominant_share > 0.8


@pytest.mark.parametrize("make", [photo, noisy])
def test_photos_and_noise_measure_over_the_threshold(make):
    measured = complexity(make())
    assert measured.value > 10 * COMPLEXITY_THRESHOLD
    assert not measured.synthetic
    assert measured.sample_colors > 1000


def test_flat_image_has_few_sample_colours():
    assert complexity(flat_synthetic()).sample_colors <= 4


def test_grey_alpha_and_tiny_images_are_measured():
    grey = from_array(np.full((50, 60), 90, np.uint8))
    assert complexity(grey).synthetic
    alpha = np.zeros((30, 40, 4), np.uint8)
    alpha[:, :, 3] = 255
    assert complexity(from_array(alpha)).synthetic
    assert complexity(from_array(np.full((1, 1, 3), 9, np.uint8))).bits_per_pixel >= 0


def test_sample_is_bounded_whatever_the_size():
    big = pyvips.Image.black(5000, 4000, bands=3)
    parts = sample(big)
    assert sum(p.width * p.height for p in parts) <= 12 * 8 * 1024
    small = pyvips.Image.black(50, 40, bands=3)
    assert [(p.width, p.height) for p in sample(small)] == [(50, 40)]


SYNTHETIC = Complexity(0.01, 0.2, 0.95, 12)
PHOTO = Complexity(8.0, 9.0, 0.1, 20000)


def test_photo_candidates_are_the_lossy_formats():
    got = candidates(("jpeg", "webp", "avif"), False, PHOTO)
    assert got == [Candidate("jpeg"), Candidate("webp"), Candidate("avif")]


def test_png_joins_for_alpha():
    got = candidates(("jpeg", "webp"), True, PHOTO)
    assert Candidate("png", lossless=True) in got


def test_synthetic_candidates_are_lossless_and_near_lossless():
    got = candidates(("jpeg", "png", "webp", "avif"), False, SYNTHETIC)
    assert got == [
        Candidate("png", lossless=True, palette_colors=256),
        Candidate("webp", lossless=True),
        Candidate("webp", near_lossless=True),
    ]


def test_synthetic_with_many_colours_is_not_quantized():
    got = candidates(("png",), False, Complexity(0.05, 0.5, 0.9, 4000))
    assert got == [Candidate("png", lossless=True)]


def test_synthetic_without_a_lossless_candidate_stays_lossy():
    got = candidates(("jpeg", "avif"), False, SYNTHETIC)
    assert got == [Candidate("jpeg"), Candidate("avif")]


def test_unmeasured_is_lossy():
    assert candidates(("webp",), False, None) == [Candidate("webp")]
