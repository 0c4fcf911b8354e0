"""DSSIM (imagesvc/encoding/dssim.py) against an independent scikit-image computation of the
documented formula: Y'CbCr (full-range BT.601) in float64, skimage's structural_similarity per
channel (7x7 uniform window, sample covariance, data_range 255), weights 0.75/0.125/0.125,
DSSIM = (1 - SSIM) / 2. The images are encoded and decoded for real."""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
from skimage import data as skdata
from skimage.metrics import structural_similarity

from imagesvc.encoding.dssim import DssimReference, decode, dssim
from tests.images import from_array

# The documented matrix, written out here rather than imported from the module under test.
BT601 = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ]
)


def skimage_dssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """The README's formula, in float64 with scikit-image."""
    if reference.ndim == 2:
        channels = [(reference.astype(np.float64), decoded.astype(np.float64), 1.0)]
    else:

        def ycbcr(rgb):
            return rgb.astype(np.float64) @ BT601.T + np.array([0.0, 128.0, 128.0])

        a, b = ycbcr(reference), ycbcr(decoded)
        channels = [(a[..., c], b[..., c], w) for c, w in enumerate((0.75, 0.125, 0.125))]
    side = min(7, *reference.shape[:2])
    side -= 1 - side % 2
    ssim = sum(
        w
        * structural_similarity(
            x,
            y,
            data_range=255,
            win_size=side,
            gaussian_weights=False,
            use_sample_covariance=True,
            K1=0.01,
            K2=0.03,
        )
        for x, y, w in channels
    )
    return (1 - ssim) / 2


def _gradient(width=200, height=150):
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack(
        [x + 0 * y, y + 0 * x, (x + y) / 2 + 40 * np.sin(x / 9) * np.cos(y / 7)], axis=-1
    )
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _noise(width=160, height=120, seed=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


IMAGES = {
    "astronaut": lambda: skdata.astronaut()[::2, ::2],
    "chelsea": lambda: skdata.chelsea(),
    "coffee": lambda: skdata.coffee()[::2, ::2],
    "camera (grey)": lambda: skdata.camera()[::2, ::2],
    "gradient": _gradient,
    "noise": _noise,
}


def _encode(image: pyvips.Image, fmt: str, quality: int) -> bytes:
    if fmt == "jpeg":
        return image.jpegsave_buffer(Q=quality, keep="none")
    if fmt == "webp":
        return image.webpsave_buffer(Q=quality, keep="none")
    return image.heifsave_buffer(Q=quality, compression="av1", effort=0, keep="none")


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize(("fmt", "quality"), [("jpeg", 20), ("jpeg", 75), ("webp", 50)])
def test_matches_skimage(name, fmt, quality):
    pixels = np.ascontiguousarray(IMAGES[name]())
    image = from_array(pixels)
    data = _encode(image, fmt, quality)
    decoded = decode(data)
    decoded_pixels = decoded.numpy()
    if pixels.ndim == 2 and decoded_pixels.ndim == 3:  # WebP decodes grey as RGB
        decoded_pixels = decoded.colourspace("b-w").numpy()
    expected = skimage_dssim(pixels, decoded_pixels)
    reference = DssimReference(image)
    assert reference.dssim(decoded) == pytest.approx(expected, abs=1e-6)
    assert reference.dssim_of(data) == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 1


def test_avif_and_qualities_order():
    pixels = np.ascontiguousarray(skdata.astronaut()[::2, ::2])
    image = from_array(pixels)
    reference = DssimReference(image)
    values = []
    for quality in (20, 50, 90):
        data = _encode(image, "avif", quality)
        value = reference.dssim_of(data)
        assert value == pytest.approx(skimage_dssim(pixels, decode(data).numpy()), abs=1e-6)
        values.append(value)
    assert values[0] > values[1] > values[2] > 0


def test_identical_is_zero_and_bounds():
    pixels = _gradient()
    image = from_array(pixels)
    assert DssimReference(image).dssim(image) == pytest.approx(0.0, abs=1e-7)
    inverted = from_array(255 - pixels)
    value = dssim(image, inverted)
    assert value == pytest.approx(skimage_dssim(pixels, 255 - pixels), abs=1e-6)
    assert 0 < value <= 1


def test_small_images_use_a_smaller_window():
    pixels = _noise(width=40, height=5)
    other = np.clip(pixels.astype(int) + _noise(40, 5, seed=9) // 8 - 16, 0, 255).astype(np.uint8)
    reference = DssimReference(from_array(pixels))
    assert reference.window == 5
    assert reference.dssim(from_array(other)) == pytest.approx(
        skimage_dssim(pixels, other), abs=1e-6
    )


def test_alpha_is_flattened_onto_the_background():
    rgb = _gradient()
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    alpha[40:80, 50:120] = 0
    rgba = from_array(np.concatenate([rgb, alpha], axis=2))
    flat = rgba.flatten(background=[255, 255, 255])
    reference = DssimReference(flat)
    data = rgba.webpsave_buffer(Q=60, keep="none")  # WebP keeps the alpha
    assert decode(data).bands == 4
    expected = skimage_dssim(flat.numpy(), decode(data).flatten(background=[255] * 3).numpy())
    assert reference.dssim_of(data) == pytest.approx(expected, abs=1e-6)


def test_region_weights():
    pixels = np.ascontiguousarray(skdata.chelsea())
    image = from_array(pixels)
    decoded = decode(_encode(image, "jpeg", 30))
    reference = DssimReference(image)
    height, width = pixels.shape[:2]
    ones = np.ones((height, width))
    assert reference.dssim(decoded, weights=ones) == pytest.approx(reference.dssim(decoded))
    # Weights on one region only: the mean of the SSIM maps over the windows centred there.
    weights = np.zeros((height, width))
    weights[50:150, 100:300] = 1.0
    maps = reference.ssim_maps(decoded)
    pad = reference.pad
    region = maps[:, 50 - pad : 150 - pad, 100 - pad : 300 - pad].mean(axis=(1, 2))
    expected = (1 - np.dot([0.75, 0.125, 0.125], region)) / 2
    assert reference.dssim(decoded, weights=weights) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        reference.dssim(decoded, weights=np.zeros((height, width)))


def test_size_mismatch_is_an_error():
    reference = DssimReference(from_array(_gradient(64, 48)))
    with pytest.raises(ValueError, match="decoded image is"):
        reference.dssim(from_array(_gradient(48, 64)))


def test_the_check_runs_between_strips_and_can_stop_the_reference_and_the_measure():
    image = from_array(skdata.astronaut())
    calls = []

    class Stop(Exception):
        pass

    def stop_on_third():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        DssimReference(image, check=stop_on_third)
    reference = DssimReference(image, check=lambda: calls.append(1))
    calls.clear()
    reference.dssim_of(image.jpegsave_buffer(Q=50))
    assert len(calls) > 512 // 48  # every strip of 48 rows, and once before the decode
