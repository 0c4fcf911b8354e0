"""Region maps: where the background, the skin and the clothes are, and how they follow the
image through a pipeline.

A ``RegionMap`` holds soft masks at the analysis size (the detector's input: the oriented source
scaled to at most IMAGESVC_DETECTION_MAX_SIDE): the person probability from the segmentation
model and the skin probability from `imagesvc.regions.skin`. ``at`` maps both onto the pixels of
the image a step sees, through ``StepContext.transform`` (source -> current pixels) exactly as
detection boxes are mapped, so masks stay right after resizes, crops, turns and flips.
Classes are decided only at the end, per pixel (``labels``): person below 0.5 is background,
a person pixel with skin probability from 0.5 up is skin, the other person pixels clothes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvips

from imagesvc.geometry import Affine

BACKGROUND, SKIN, CLOTHES = 0, 1, 2
CLASS_NAMES = ("background", "skin", "clothes")


@dataclass(frozen=True, slots=True)
class RegionMap:
    person: np.ndarray  # float32 H x W in [0, 1], analysis pixels
    skin: np.ndarray  # float32 H x W in [0, 1]: skin given person (not yet multiplied)
    source_size: tuple[int, int]  # oriented source width, height
    model: str = ""  # the segmentation model's name
    skin_model: str = ""  # how skin was told: SkinModel.source, "faces" or "prior"
    # Oriented source pixels -> the pipeline's source pixels: identity, unless the load
    # leaves the EXIF orientation to the pipeline (IMAGESVC_AUTO_ROTATE off).
    to_pipeline: Affine = Affine()

    @property
    def size(self) -> tuple[int, int]:
        return self.person.shape[1], self.person.shape[0]

    def at(self, transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(person, skin) float32 width x height arrays for an image whose pixels are
        ``transform`` of the source's; outside the source both are 0."""
        to_source = Affine.scale(
            self.source_size[0] / self.size[0], self.source_size[1] / self.size[1]
        )
        mapping = to_source.then(self.to_pipeline).then(transform)
        return (
            map_plane(self.person, mapping, width, height),
            map_plane(self.skin, mapping, width, height),
        )


def map_plane(plane: np.ndarray, mapping: Affine, width: int, height: int) -> np.ndarray:
    """``plane`` (float32 h x w) resampled (bilinear) onto a width x height grid whose
    continuous coordinates are ``mapping`` of the plane's; 0 outside it."""
    image = pyvips.Image.new_from_array(np.ascontiguousarray(plane, dtype=np.float32))
    # Pixel centres: out + 0.5 = M (in + 0.5), i.e. out = M in + (M_lin 0.5 + t - 0.5).
    a, b, c, d, e, f = mapping.a, mapping.b, mapping.c, mapping.d, mapping.e, mapping.f
    odx = 0.5 * (a + b) + c - 0.5
    ody = 0.5 * (d + e) + f - 0.5
    mapped = image.affine(
        [a, b, d, e],
        odx=odx,
        ody=ody,
        oarea=[0, 0, width, height],
        interpolate=pyvips.Interpolate.new("bilinear"),
        background=[0],
    )
    return np.asarray(mapped.numpy(), dtype=np.float32).reshape(height, width)


def labels(person: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """uint8 class per pixel: BACKGROUND, SKIN or CLOTHES."""
    out = np.full(person.shape, BACKGROUND, dtype=np.uint8)
    is_person = person >= 0.5
    out[is_person] = CLOTHES
    out[is_person & (skin >= 0.5)] = SKIN
    return out


def shares(classes: np.ndarray) -> dict[str, float]:
    """The share of the image each class covers, by name."""
    counts = np.bincount(classes.ravel(), minlength=len(CLASS_NAMES))
    total = max(1, int(classes.size))
    return {name: float(counts[i]) / total for i, name in enumerate(CLASS_NAMES)}


def to_png(classes: np.ndarray) -> bytes:
    """The class map as a one-band 8-bit PNG, pixel value = class (0 background, 1 skin,
    2 clothes): small (long runs deflate well) and readable by any decoder."""
    image = pyvips.Image.new_from_array(np.ascontiguousarray(classes, dtype=np.uint8))
    return image.cast("uchar").pngsave_buffer(compression=9)
