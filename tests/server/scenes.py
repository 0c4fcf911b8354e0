"""Test scenes built from scikit-image's bundled astronaut (public domain, NASA)."""

from __future__ import annotations

import numpy as np
import pyvips
from skimage import data

# Where BlazeFace puts the astronaut's face in skimage.data.astronaut() (512x512): eyebrows to
# chin, checked by eye. Tests allow FACE_TOLERANCE pixels either way on each edge.
FACE_BOX = (175, 77, 95, 95)  # left, top, width, height
FACE_TOLERANCE = 15


def near_face_box(box, scale: float = 1.0) -> bool:
    """Whether a BoundingBox matches FACE_BOX (scaled) within the tolerance on every edge."""
    left, top, width, height = (v * scale for v in FACE_BOX)
    edges = (
        (box.left, left),
        (box.top, top),
        (box.left + box.width, left + width),
        (box.top + box.height, top + height),
    )
    return all(abs(got - want) <= FACE_TOLERANCE * max(scale, 1) for got, want in edges)


def astronaut() -> pyvips.Image:
    return pyvips.Image.new_from_array(data.astronaut()).copy(interpretation="srgb")


def wide_scene() -> pyvips.Image:
    """1536x512: the astronaut at the left, flat grey in the middle and, at the right, a 64 px
    checkerboard of red and skin tone that libvips' attention strategy prefers over the face.

    A square fill crop then keeps the face only with object gravity: centre gravity takes the
    grey middle and smart gravity takes the checkerboard.
    """
    canvas = np.full((512, 1536, 3), 118, dtype=np.uint8)
    canvas[:, :512] = data.astronaut()
    rows, cols = np.mgrid[0:512, 0:600]
    red = ((rows // 64 + cols // 64) % 2).astype(bool)[..., None]
    canvas[:, 900:1500] = np.where(red, np.uint8([255, 0, 0]), np.uint8([230, 170, 130]))
    return pyvips.Image.new_from_array(canvas).copy(interpretation="srgb")


def find_offset(output: np.ndarray, reference: np.ndarray) -> int:
    """Horizontal offset at which ``output`` (HxWx3) best matches a window of ``reference``."""
    out = output.astype(np.float32)
    ref = reference.astype(np.float32)
    width = out.shape[1]
    errors = [np.mean(np.abs(ref[:, x : x + width] - out)) for x in range(ref.shape[1] - width + 1)]
    return int(np.argmin(errors))


def two_heads() -> tuple[pyvips.Image, tuple[float, float], tuple[float, float]]:
    """1200x400 grey: the astronaut's head (300x300 from the top of the picture) at x=50, and
    the same head at 0.85 scale at x=520, near the centre. Returns the scene and each face's
    expected (left, right) span, from FACE_BOX.

    The faces (95 and ~81 px wide) are 540 px apart edge to edge, so a 225x400 (9:16) crop holds
    one at most, and the window centred on their union (282..507) holds neither.
    """
    canvas = np.full((400, 1200, 3), 118, dtype=np.uint8)
    head = data.astronaut()[0:300, 100:400]
    canvas[50:350, 50:350] = head
    small = pyvips.Image.new_from_array(np.ascontiguousarray(head)).resize(0.85, kernel="lanczos3")
    small_array = small.numpy()
    h, w = small_array.shape[:2]
    canvas[60 : 60 + h, 520 : 520 + w] = small_array
    face_left, _, face_width, _ = FACE_BOX
    big = (50 + face_left - 100, 50 + face_left - 100 + face_width)
    little = (520 + (face_left - 100) * 0.85, 520 + (face_left - 100 + face_width) * 0.85)
    return pyvips.Image.new_from_array(canvas).copy(interpretation="srgb"), big, little
