"""Skin inside the person: a per-image skin-colour model seeded from the detected faces.

No model in reach labels clothes, so the person mask is split by colour. Skin colour varies
far more between people and lighting than within one photo, so the model is fitted to each
image: the chroma (Cb, Cr of full-range BT.601, the plane JPEG codes) of the middle of every
face box — cheeks, nose and mouth; the top (hair, eyes, brows) and the sides (hair, background)
left out — and only where the person mask says person. A Gaussian in (Cb, Cr) is fitted to
those seeds robustly (the half nearest their median first: lips, beard, glasses and shadows in
the seed area may be up to half of it), and every person pixel whose Mahalanobis distance to it
is small is skin. A generic prior (the
Cb/Cr box of Chai & Ngan, 1999: 77 <= Cb <= 127, 133 <= Cr <= 173, as a Gaussian) stands in when
no face gives enough seeds, and widens the fitted model a little, so that one pale face does not
make every other arm clothes.

Each face itself counts as skin whole (``face_ellipses``): eyes, lips and beard are part of
what a viewer reads as the face, and the colour model alone leaves holes there.

Clothes are then the rest of the person (hair included: nothing here tells hair).

Contract: plain numpy on the detector's input (uint8 RGB, H x W x 3); faces in its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imagesvc.geometry import Box

# The middle of a face box the seeds come from, as fractions of its width and height.
SEED_X = (0.25, 0.75)
SEED_Y = (0.40, 0.85)
MIN_SEEDS = 40
# The robust fit's core: this share of the seeds nearest their median; then every seed within
# CORE_DISTANCE (Mahalanobis; 95 % of a 2-D Gaussian lies within 2.45) of the core's Gaussian.
CORE_SHARE = 0.5
CORE_DISTANCE = 2.45
# Below this luma chroma is noise (shadows, dark hair): never skin.
MIN_LUMA = 40.0
# The generic prior: Chai & Ngan's box, its centre and half-widths as two standard deviations.
PRIOR_MEAN = np.array([102.0, 153.0])
PRIOR_COV = np.diag([(25.0 / 2) ** 2, (20.0 / 2) ** 2])
# The fitted covariance gets this much of the prior's added (a floor on its spread).
PRIOR_BLEND = 0.15
# Mahalanobis distance at which skin probability is one half. Chosen on the tuning photos of
# bench/regions_labels.json (bench/skin_iou.py): 2.5 -> 1.5 raised their skin IoU 0.38 -> 0.44.
HALF_DISTANCE = 1.5
# Every detected face counts as skin whole, eyes, brows, lips and beard included (the parts the
# eye reads first): an ellipse this many times the face box's width and height, centred on it.
# BlazeFace's box runs from the brows to the chin, so the ellipse is taller than the box to
# take in the forehead. With it the tuning photos' skin IoU went 0.44 -> 0.57.
FACE_ELLIPSE = (1.1, 1.2)


@dataclass(frozen=True, slots=True)
class SkinModel:
    mean: np.ndarray  # (Cb, Cr)
    cov: np.ndarray  # 2x2
    seeds: int  # pixels it was fitted to; 0 for the prior
    source: str  # "faces" or "prior"

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """Skin probability per pixel of ``rgb`` (uint8 H x W x 3), float32 in [0, 1]."""
        luma, chroma = ycbcr(rgb)
        distance = mahalanobis(chroma, self.mean, self.cov)
        # A logistic in distance: 1 at the mean, 0.5 at HALF_DISTANCE, ~0 beyond 4.
        prob = 1.0 / (1.0 + np.exp(2.0 * (distance - HALF_DISTANCE)))
        prob[luma < MIN_LUMA] = 0.0
        return prob.astype(np.float32)


def ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-range BT.601: luma H x W and chroma H x W x 2 (Cb, Cr), float32."""
    pixels = np.asarray(rgb, dtype=np.float32)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 + (b - y) / 1.772
    cr = 128.0 + (r - y) / 1.402
    return y, np.stack([cb, cr], axis=-1)


def mahalanobis(chroma: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(cov).astype(np.float32)
    delta = chroma - mean.astype(np.float32)
    squared = np.einsum("...i,ij,...j->...", delta, inverse, delta)
    return np.sqrt(np.maximum(squared, 0.0))


def seed_pixels(
    rgb: np.ndarray, faces: Sequence[Box], person: np.ndarray | None = None
) -> np.ndarray:
    """(N, 2) chroma of the seed pixels of every face: the middle of its box, person only,
    luma above MIN_LUMA."""
    height, width = rgb.shape[:2]
    luma, chroma = ycbcr(rgb)
    picked = []
    for face in faces:
        x0 = int(round(face.left + SEED_X[0] * face.width))
        x1 = int(round(face.left + SEED_X[1] * face.width))
        y0 = int(round(face.top + SEED_Y[0] * face.height))
        y1 = int(round(face.top + SEED_Y[1] * face.height))
        x0, x1 = max(0, x0), min(width, x1)
        y0, y1 = max(0, y0), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        keep = luma[y0:y1, x0:x1] >= MIN_LUMA
        if person is not None:
            keep &= person[y0:y1, x0:x1] >= 0.5
        picked.append(chroma[y0:y1, x0:x1][keep])
    if not picked:
        return np.zeros((0, 2), dtype=np.float32)
    return np.concatenate(picked).astype(np.float32)


def fit(seeds: np.ndarray) -> SkinModel:
    """A robust Gaussian of ``seeds`` (N x 2 chroma), widened by the prior; the prior alone
    when there are fewer than MIN_SEEDS.

    Robust to up to half the seeds being something else (lips, beard, glasses, shadow): the
    core is the half of the seeds nearest the per-channel median (in MAD units); the Gaussian
    of the core then takes back every seed within CORE_DISTANCE of it, and is fitted again."""
    if len(seeds) < MIN_SEEDS:
        return SkinModel(PRIOR_MEAN.copy(), PRIOR_COV.copy(), 0, "prior")
    points = np.asarray(seeds, dtype=np.float64)
    median = np.median(points, axis=0)
    mad = np.median(np.abs(points - median), axis=0) * 1.4826 + 1.0
    nearness = np.sqrt((((points - median) / mad) ** 2).sum(axis=1))
    core = points[nearness <= np.quantile(nearness, CORE_SHARE)]
    mean = core.mean(axis=0)
    cov = _covariance(core)
    distance = mahalanobis(points.astype(np.float32), mean, cov)
    kept = points[distance <= CORE_DISTANCE]
    if len(kept) >= MIN_SEEDS:
        mean, cov = kept.mean(axis=0), _covariance(kept)
    return SkinModel(mean, cov, len(seeds), "faces")


def _covariance(points: np.ndarray) -> np.ndarray:
    return np.cov(points, rowvar=False) + PRIOR_BLEND * PRIOR_COV


def skin_model(
    rgb: np.ndarray, faces: Sequence[Box], person: np.ndarray | None = None
) -> SkinModel:
    return fit(seed_pixels(rgb, faces, person))


def face_ellipses(shape: tuple[int, int], faces: Sequence[Box]) -> np.ndarray:
    """bool H x W: inside the FACE_ELLIPSE of any face."""
    height, width = shape
    inside = np.zeros((height, width), dtype=bool)
    sx, sy = FACE_ELLIPSE
    for face in faces:
        rx, ry = sx * face.width / 2, sy * face.height / 2
        if rx <= 0 or ry <= 0:
            continue
        cx, cy = face.left + face.width / 2, face.top + face.height / 2
        x0, x1 = max(0, int(cx - rx)), min(width, int(np.ceil(cx + rx)) + 1)
        y0, y1 = max(0, int(cy - ry)), min(height, int(np.ceil(cy + ry)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        # Pixel centres inside the ellipse.
        inside[y0:y1, x0:x1] |= ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
    return inside


def skin_probability(
    rgb: np.ndarray, faces: Sequence[Box], person: np.ndarray | None = None
) -> tuple[np.ndarray, SkinModel]:
    """Skin probability of every pixel (given person: multiply by the person mask to use it)
    and the colour model behind it: the per-image colour model, with every face's ellipse
    counted as skin whole."""
    model = skin_model(rgb, faces, person)
    prob = model.probability(rgb)
    prob[face_ellipses(prob.shape, faces)] = 1.0
    return prob, model
