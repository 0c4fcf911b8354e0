"""The per-image skin-colour model: seeds from faces, the trimmed fit, the prior."""

from __future__ import annotations

import numpy as np

from imagesvc.geometry import Box
from imagesvc.regions import skin

SKIN_RGB = (224, 172, 140)
DARK_SKIN_RGB = (120, 80, 60)
SHIRT_RGB = (40, 90, 200)


def scene(face_rgb=SKIN_RGB, arm_rgb=None) -> tuple[np.ndarray, Box]:
    """A blue shirt below a face, an arm of ``arm_rgb`` (default the face's) at the side."""
    rgb = np.zeros((120, 100, 3), np.uint8)
    rgb[:] = (200, 200, 190)  # background
    rgb[10:50, 30:70] = face_rgb
    rgb[50:120, 20:80] = SHIRT_RGB
    rgb[60:110, 80:90] = arm_rgb or face_rgb
    return rgb, Box(30, 10, 40, 40)


def test_seeds_come_from_the_middle_of_the_face_on_the_person():
    rgb, face = scene()
    rgb[10:20, 30:70] = (20, 20, 20)  # hair on top: outside the seed area anyway
    seeds = skin.seed_pixels(rgb, [face])
    expected = (0.85 - 0.40) * 40 * (0.75 - 0.25) * 40
    assert abs(len(seeds) - expected) <= 60
    person = np.zeros(rgb.shape[:2], np.float32)
    assert len(skin.seed_pixels(rgb, [face], person)) == 0  # nobody there


def test_a_fitted_model_finds_skin_and_not_the_shirt():
    for colour in (SKIN_RGB, DARK_SKIN_RGB):
        rgb, face = scene(colour)
        model = skin.skin_model(rgb, [face])
        assert model.source == "faces"
        prob = model.probability(rgb)
        assert prob[30, 50] > 0.9  # the face
        assert prob[80, 85] > 0.9  # the arm, never seeded
        assert prob[90, 50] < 0.05  # the shirt


def test_the_fit_ignores_a_minority_of_odd_seed_pixels():
    rgb, face = scene()
    rgb[35:40, 40:60] = (170, 30, 40)  # lips: red, in the seed area
    model = skin.skin_model(rgb, [face])
    assert model.probability(rgb)[30, 50] > 0.9
    assert model.probability(rgb)[37, 50] < 0.5


def test_without_faces_the_prior_serves():
    rgb, _ = scene()
    model = skin.skin_model(rgb, [])
    assert model.source == "prior" and model.seeds == 0
    prob = model.probability(rgb)
    assert prob[30, 50] > 0.5 and prob[90, 50] < 0.05


def test_dark_pixels_are_never_skin():
    rgb = np.full((8, 8, 3), (30, 20, 15), np.uint8)  # a skin hue, in shadow
    model = skin.fit(np.zeros((0, 2)))
    assert model.probability(rgb).max() == 0.0


def test_ycbcr_matches_the_jfif_matrix():
    y, chroma = skin.ycbcr(np.array([[[255, 0, 0]]], np.uint8))
    assert np.isclose(y[0, 0], 0.299 * 255, atol=1e-3)
    assert np.isclose(chroma[0, 0, 0], 128 - 0.168736 * 255, atol=1e-2)
    assert np.isclose(chroma[0, 0, 1], 128 + 0.5 * 255, atol=1e-2)


def test_the_whole_face_counts_as_skin_lips_and_eyes_included():
    rgb, face = scene()
    rgb[35:40, 40:60] = (170, 30, 40)  # lips
    rgb[22:26, 36:46] = (30, 30, 30)  # an eye
    prob, model = skin.skin_probability(rgb, [face])
    assert model.source == "faces"
    assert prob[37, 50] == 1.0 and prob[24, 40] == 1.0
    assert prob[90, 50] < 0.05  # the shirt below is still clothes
    assert prob[5, 50] < 0.05  # the background above the face, outside the ellipse


def test_face_ellipses_cover_the_box_middle_not_its_corners():
    inside = skin.face_ellipses((100, 100), [Box(20, 20, 40, 40)])
    assert inside[40, 40]  # the centre
    assert inside[40, 20 - 1]  # 1.1 x as wide: a pixel left of the box
    assert not inside[20, 20]  # the box's corner
    assert not inside[40, 2]
    assert skin.face_ellipses((10, 10), [Box(-50, -50, 5, 5)]).sum() == 0
