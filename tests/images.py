"""Small test images made in code, and decode / compare helpers.

Nothing here hard-codes encoded bytes: images are generated from numpy arrays and compared after
decoding (sizes, SSIM, pixel and region checks).
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
import pyvips
from skimage.metrics import structural_similarity

from imagesvc.v1 import image_service_pb2 as pb

# --- Making images --------------------------------------------------------------------------


def from_array(array: np.ndarray) -> pyvips.Image:
    """A pyvips image from an HxW, HxWx2, HxWx3 or HxWx4 uint8 array, with the right
    interpretation (b-w for grey and grey+alpha, srgb for colour)."""
    array = np.ascontiguousarray(array)
    bands = 1 if array.ndim == 2 else array.shape[2]
    interpretation = "b-w" if bands <= 2 else "srgb"
    return pyvips.Image.new_from_array(array, interpretation=interpretation)


def to_array(image: pyvips.Image) -> np.ndarray:
    """HxWxB numpy array of the image's pixels (always 3-D)."""
    array = image.numpy()
    return array[:, :, None] if array.ndim == 2 else array


def coords(width: int, height: int) -> np.ndarray:
    """RGB array whose red channel is x and green channel is y (both < 256), blue 128.

    After a crop, the pixel at (0, 0) tells exactly where the crop started."""
    assert width <= 256 and height <= 256
    array = np.empty((height, width, 3), np.uint8)
    array[:, :, 0] = np.arange(width, dtype=np.uint8)[None, :]
    array[:, :, 1] = np.arange(height, dtype=np.uint8)[:, None]
    array[:, :, 2] = 128
    return array


def coords_image(width: int, height: int) -> pyvips.Image:
    return from_array(coords(width, height))


def origin_of(image: pyvips.Image) -> tuple[int, int]:
    """(x, y) of a coords image's top-left pixel in the original coords image."""
    pixel = to_array(image)[0, 0]
    return int(pixel[0]), int(pixel[1])


def solid(width: int, height: int, rgb=(128, 128, 128)) -> np.ndarray:
    array = np.empty((height, width, len(rgb)), np.uint8)
    array[:, :] = rgb
    return array


def with_marker(array: np.ndarray, x: int, y: int, size: int, colour=(255, 0, 0)) -> np.ndarray:
    """Copy of the array with a size x size square of colour at (x, y) (top-left corner)."""
    out = array.copy()
    out[y : y + size, x : x + size] = colour
    return out


def marker_centre(
    array: np.ndarray, colour=(255, 0, 0), tolerance: int = 60
) -> tuple[float, float]:
    """Centre (x, y) of the pixels within tolerance of colour, in continuous pixel coordinates
    (the centre of pixel (i, j) is (i + 0.5, j + 0.5))."""
    rgb = array[:, :, :3].astype(int)
    mask = np.all(np.abs(rgb - np.array(colour)) <= tolerance, axis=2)
    ys, xs = np.nonzero(mask)
    assert len(xs), "marker not found"
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5)


@functools.cache
def _astronaut() -> pyvips.Image:
    from skimage import data

    picture = np.ascontiguousarray(data.astronaut())
    return pyvips.Image.new_from_array(picture, interpretation="srgb")


def textured(width: int, height: int) -> np.ndarray:
    """A natural, detailed RGB picture (scikit-image's astronaut) resized to width x height."""
    picture = _astronaut()
    resized = picture.resize(width / picture.width, vscale=height / picture.height)
    return to_array(resized)[:, :, :3].copy()


def with_orientation(image: pyvips.Image, orientation: int) -> pyvips.Image:
    """Copy of the image tagged with an EXIF orientation (written to EXIF by the savers)."""
    tagged = image.copy()
    tagged.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return tagged


# --- Encoded sources ------------------------------------------------------------------------


def jpeg(image: pyvips.Image | np.ndarray, **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = from_array(image)
    options.setdefault("Q", 95)
    return image.jpegsave_buffer(**options)


def png(image: pyvips.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = from_array(image)
    return image.pngsave_buffer()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height RGB pixels but whose IDAT holds almost
    nothing: only a decoder that trusts the header before reading pixels is safe from it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def decode(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


def loader_of(data: bytes) -> str:
    """libvips' loader nickname for the bytes, e.g. jpegload_buffer."""
    return decode(data).get("vips-loader")


# --- Comparing ------------------------------------------------------------------------------


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    if a.ndim == 3 and a.shape[2] > 1:
        return float(structural_similarity(a, b, channel_axis=2, data_range=255))
    return float(structural_similarity(a.squeeze(), b.squeeze(), data_range=255))


# --- Requests -------------------------------------------------------------------------------


def request(data: bytes, *pipelines: list[pb.Operation], **output) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[pb.Pipeline(operations=ops) for ops in pipelines],
        output=pb.OutputOptions(**output),
    )
