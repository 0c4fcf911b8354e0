"""The autoquality model's features and curve maths (inference/autoquality.py), no Triton."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvips

from inference import autoquality as aq

GRID = (15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 89, 90, 95)


def _curve(a: float = -1.5, slope: float = -0.03) -> np.ndarray:
    """log DSSIM falling linearly with the quality: DSSIM = exp(a + slope (q - 15))."""
    return np.array([a + slope * (q - 15) for q in GRID])


# --- monotone --------------------------------------------------------------------------------


def test_monotone_keeps_a_falling_curve_and_pools_a_rise():
    falling = _curve()
    assert np.array_equal(aq.monotone(falling), falling)
    bumped = np.array([-1.0, -2.0, -1.6, -3.0])
    fixed = aq.monotone(bumped)
    assert np.all(np.diff(fixed) <= 0)
    # Least squares: the violating pair is replaced by its mean.
    assert np.allclose(fixed, [-1.0, -1.8, -1.8, -3.0])


# --- inversion -------------------------------------------------------------------------------


def test_quality_for_inverts_the_curve_between_grid_points():
    curve = _curve(-1.5, -0.03)
    for q in (17.5, 42.0, 63.3, 88.0):
        target = math.exp(-1.5 - 0.03 * (q - 15))
        assert aq.quality_for(GRID, curve, target) == pytest.approx(q, abs=1e-9)


def test_quality_for_is_the_first_crossing_of_the_monotone_curve():
    # A rise after the crossing (noise) must not move the answer to a later crossing.
    curve = np.log([0.05, 0.03, 0.018, 0.02, 0.012, 0.01])
    grid = (20, 30, 40, 50, 60, 70)
    q = aq.quality_for(grid, curve, 0.019)
    assert 30 < q < 50
    # The monotone version of the 40..50 stretch is flat at the mean: the first point at or
    # under the target is 40, reached between 30 and 40.
    fixed = aq.monotone(curve)
    assert fixed[2] == pytest.approx(fixed[3])


def test_quality_for_extrapolates_past_the_ends_and_clamps():
    curve = _curve(-1.5, -0.03)
    # A target above the curve's first value lies below the grid.
    below = math.exp(-1.5 + 0.03 * 5)  # q = 10 on the same line
    assert aq.quality_for(GRID, curve, below) == pytest.approx(10.0)
    above = math.exp(-1.5 - 0.03 * (99 - 15))
    assert aq.quality_for(GRID, curve, above) == pytest.approx(99.0)
    assert aq.quality_for(GRID, curve, above, low=1, high=95) == 95.0
    assert aq.quality_for(GRID, curve, below, low=30, high=95) == 30.0


def test_a_flat_end_still_gives_a_finite_quality():
    curve = np.full(len(GRID), math.log(0.02))
    q = aq.quality_for(GRID, curve, 0.01)
    assert math.isfinite(q) and q == 100.0  # clamped: the curve never gets there


def test_predicted_quality_rounds_and_clamps():
    curve = _curve(-1.5, -0.03)
    target = math.exp(-1.5 - 0.03 * (42.6 - 15))
    assert aq.predicted_quality(GRID, curve, target) == 43
    assert aq.predicted_quality(GRID, curve, target, low=50, high=80) == 50


def test_the_inversion_refuses_nonsense():
    with pytest.raises(ValueError):
        aq.quality_for(GRID, _curve(), 0.0)
    with pytest.raises(ValueError):
        aq.quality_for(GRID, _curve()[:-1], 0.02)
    with pytest.raises(ValueError):
        aq.quality_for((20, 10), [0.0, -1.0], 0.02)
    with pytest.raises(ValueError):
        aq.quality_for(GRID, np.full(len(GRID), np.nan), 0.02)


# --- correction ------------------------------------------------------------------------------


def test_shift_through_passes_through_the_measured_point_with_the_same_shape():
    curve = _curve(-1.5, -0.03)
    shifted = aq.shift_through(GRID, curve, 52, 0.03)
    assert aq.log_dssim_at(GRID, shifted, 52) == pytest.approx(math.log(0.03))
    assert np.allclose(np.diff(shifted), np.diff(curve))


def test_one_correction_lands_on_the_target_when_only_the_level_was_wrong():
    truth = _curve(-1.2, -0.035)  # the image is harder than predicted...
    predicted = _curve(-1.6, -0.035)  # ... by a constant factor in DSSIM
    target = 0.02
    first = aq.predicted_quality(GRID, predicted, target)
    measured = math.exp(aq.log_dssim_at(GRID, truth, first))
    assert abs(measured - target) > 0.001  # the first guess misses
    second = aq.corrected_quality(GRID, predicted, target, (first, measured))
    want = aq.quality_for(GRID, truth, target)
    assert abs(second - want) <= 0.5
    assert second > first


def test_correction_moves_down_when_the_encode_was_better_than_predicted():
    predicted = _curve(-1.2, -0.03)
    first = aq.predicted_quality(GRID, predicted, 0.02)
    second = aq.corrected_quality(GRID, predicted, 0.02, (first, 0.012))
    assert second < first


def test_curve_points_are_the_monotone_curve_in_dssim():
    points = aq.curve_points((20, 40, 60), np.log([0.04, 0.02, 0.01]))
    assert [q for q, _ in points] == [20.0, 40.0, 60.0]
    assert [d for _, d in points] == pytest.approx([0.04, 0.02, 0.01])


# --- features --------------------------------------------------------------------------------


def _image(pixels: np.ndarray) -> pyvips.Image:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels))
    return image.copy(interpretation="srgb" if image.bands == 3 else "b-w")


def _noise(h: int, w: int, sigma: float, seed: int = 0, base: float = 128.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = np.clip(base + rng.normal(0, sigma, (h, w)), 0, 255)
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)


def test_feature_vector_shape_names_and_dtype():
    vector = aq.features(_image(_noise(120, 160, 10)))
    assert vector.shape == (aq.N_FEATURES,) and vector.dtype == np.float32
    assert len(set(aq.FEATURE_NAMES)) == aq.N_FEATURES
    assert np.all(np.isfinite(vector))
    named = dict(zip(aq.FEATURE_NAMES, vector, strict=True))
    assert named["log_pixels"] == pytest.approx(math.log(160 * 120), rel=1e-6)
    assert named["log_min_side"] == pytest.approx(math.log(120), rel=1e-6)


def test_texture_and_noise_raise_the_detail_features():
    flat = dict(zip(aq.FEATURE_NAMES, aq.features(_image(_noise(128, 128, 0.0))), strict=True))
    noisy = dict(zip(aq.FEATURE_NAMES, aq.features(_image(_noise(128, 128, 12.0))), strict=True))
    for name in ("log_grad_abs", "log_lap1", "log_noise", "log_block_var_p50", "edge_share"):
        assert noisy[name] > flat[name], name
    assert flat["flat1_share"] == 1.0 and noisy["flat1_share"] == 0.0
    assert flat["still_share"] == 1.0
    # Immerkaer's estimate of Gaussian noise is close to its sigma (log1p(12) = 2.56).
    assert noisy["log_noise"] == pytest.approx(math.log1p(12.0), abs=0.15)


def test_grey_images_have_no_chroma_and_colour_images_do():
    grey = _noise(64, 64, 5.0)[:, :, 0]
    grey_features = dict(zip(aq.FEATURE_NAMES, aq.features(_image(grey)), strict=True))
    assert grey_features["grey"] == 1.0
    assert grey_features["log_chroma_std"] == 0.0
    colour = _noise(64, 64, 5.0).copy()
    colour[:, :32, 0] = 250  # a red half
    colour_features = dict(zip(aq.FEATURE_NAMES, aq.features(_image(colour)), strict=True))
    assert colour_features["grey"] == 0.0
    assert colour_features["log_chroma_std"] > 1.0
    # The same grey content in three equal bands has (almost) no chroma.
    neutral = dict(zip(aq.FEATURE_NAMES, aq.features(_image(_noise(64, 64, 5.0))), strict=True))
    assert neutral["log_chroma_std"] < 0.01


def test_alpha_is_flattened_onto_white():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # fully transparent black
    named = dict(zip(aq.FEATURE_NAMES, aq.features(_image(rgba)), strict=True))
    assert named["luma_mean"] == pytest.approx(1.0)


def test_large_images_are_measured_on_tiles_at_output_resolution():
    # A big image of the same texture gives (nearly) the same statistics as a small one,
    # apart from its size: the tiles are read at full resolution, not downscaled.
    small = _noise(256, 256, 8.0, seed=1)
    big = _noise(1200, 1600, 8.0, seed=2)
    regions = aq._regions(big)
    assert regions.shape[1:3] == (aq.TILE, aq.TILE)
    assert regions.shape[0] * aq.TILE * aq.TILE <= aq.MAX_FEATURE_PIXELS
    a = aq.features_of_pixels(small)
    b = aq.features_of_pixels(big)
    index = aq.FEATURE_NAMES.index
    assert b[index("log_pixels")] == pytest.approx(math.log(1600 * 1200), rel=1e-6)
    for name in ("log_grad_abs", "log_lap1", "log_noise", "luma_mean"):
        assert b[index(name)] == pytest.approx(a[index(name)], rel=0.05), name


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_a_large_image_reads_the_same_tiles_whether_by_rows_or_one_by_one(monkeypatch, bands):
    # libvips cuts the tiles out of rows of them (few calls) or one by one (past
    # MAX_STRIP_BYTES): the same pixels either way, and the same as numpy's cut of the array.
    pixels = _noise(900, 1500, 20.0, seed=3)
    pixels[:, :700] //= 3  # not one texture: a misplaced tile would show
    if bands == 1:
        pixels = pixels[:, :, 0]
    elif bands == 4:
        pixels = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    by_rows = aq.features(_image(pixels))
    monkeypatch.setattr(aq, "MAX_STRIP_BYTES", 0)
    one_by_one = aq.features(_image(pixels))
    np.testing.assert_allclose(by_rows, one_by_one, rtol=1e-6, atol=1e-6)
    flat = pixels if bands != 4 else pixels[:, :, :3]
    np.testing.assert_allclose(by_rows, aq.features_of_pixels(flat), rtol=1e-6, atol=1e-6)


def test_features_refuse_what_they_cannot_measure():
    with pytest.raises(ValueError):
        aq.features_of_pixels(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        aq.features_of_pixels(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        aq.features_of_pixels(np.zeros((32, 32, 2), dtype=np.uint8))


def test_curve_spec_reads_curve_json(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(
        '{"version": "aq1-x", "features_version": 1, "formats": ["jpeg", "webp"],'
        ' "grid": [20, 40], "input": "features", "output": "log_dssim"}'
    )
    spec = aq.CurveSpec.load(path)
    assert spec.formats == ("jpeg", "webp") and spec.grid == (20, 40)
    assert spec.index("webp") == 1 and spec.version == "aq1-x"
