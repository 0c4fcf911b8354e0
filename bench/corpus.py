"""Synthetic benchmark corpus: camera-sized JPEGs built from scikit-image's bundled sample photos.

Only the image files shipped inside the ``skimage/data`` package directory are read (nothing is
fetched on demand). Each output is a mosaic of 2-6 upscaled (lanczos3) sample photos, with
Gaussian noise (sigma 3) added so the upscaled areas carry sensor-like high-frequency content,
saved as baseline JPEG q90 with 4:2:0 chroma subsampling, no metadata, no EXIF orientation.
The build is deterministic (fixed seed) and is skipped when the manifest matches.

    .venv/bin/python bench/corpus.py [--out bench/corpus] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pyvips

RECIPE_VERSION = 1
NOISE_SIGMA = 3.0
JPEG_QUALITY = 90
SEED = 20260501

COLOUR_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "motorcycle_left.png",
)
GREY_PHOTOS = ("camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png")

# (width, height, grid columns, grid rows): common camera / phone sizes between ~2000 and 3000 px.
LAYOUTS = (
    (2725, 2225, 2, 2),  # the size used by sharp's and the anchors' benchmark
    (2725, 2225, 3, 2),
    (2725, 2225, 1, 1),
    (3000, 2000, 3, 2),
    (3000, 2000, 2, 1),
    (2000, 3000, 1, 2),
    (2000, 3000, 2, 3),
    (2592, 1944, 2, 2),
    (2592, 1944, 1, 1),
    (1944, 2592, 2, 2),
    (2448, 2448, 2, 2),
    (2816, 2112, 3, 3),
)


def skimage_data_dir() -> Path:
    import skimage.data  # the package directory holds the bundled ("legacy") sample files

    return Path(skimage.data.__file__).resolve().parent


def _load_tile(path: Path, rng: random.Random) -> pyvips.Image:
    image = pyvips.Image.new_from_file(str(path), access="random")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    if image.bands == 1:
        # Grey photo -> sRGB with a mild colour cast, so every tile carries chroma.
        tint = [rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)]
        image = image.colourspace("srgb").linear(tint, [0, 0, 0])
    return image.cast("uchar")


def _cover(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Upscale (lanczos3) to cover width x height, then centre-crop."""
    scale = max(width / image.width, height / image.height) * 1.0001
    image = image.resize(scale, kernel="lanczos3")
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.extract_area(left, top, width, height)


def _mosaic(width: int, height: int, cols: int, rows: int, rng: random.Random, data: Path):
    names = list(COLOUR_PHOTOS) * 2 + list(GREY_PHOTOS)
    xs = [round(i * width / cols) for i in range(cols + 1)]
    ys = [round(j * height / rows) for j in range(rows + 1)]
    row_images = []
    for j in range(rows):
        cells = []
        for i in range(cols):
            tile = _load_tile(data / rng.choice(names), rng)
            cells.append(_cover(tile, xs[i + 1] - xs[i], ys[j + 1] - ys[j]))
        row_images.append(pyvips.Image.arrayjoin(cells, across=cols))
    return pyvips.Image.arrayjoin(row_images, across=1)


def _add_noise(image: pyvips.Image, np_rng: np.random.Generator) -> pyvips.Image:
    pixels = image.numpy().astype(np.float32)
    pixels += np_rng.normal(0.0, NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    np.clip(pixels, 0, 255, out=pixels)
    out = pyvips.Image.new_from_array(pixels.astype(np.uint8))
    return out.copy(interpretation="srgb")


def manifest_for() -> dict:
    return {
        "recipe_version": RECIPE_VERSION,
        "seed": SEED,
        "noise_sigma": NOISE_SIGMA,
        "jpeg_quality": JPEG_QUALITY,
        "layouts": [list(layout) for layout in LAYOUTS],
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
    }


def build(out: Path, force: bool = False, log=print) -> list[Path]:
    """Build (or reuse) the corpus in ``out``; returns the JPEG paths, sorted."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    wanted = manifest_for()
    files = [out / f"synthetic_{k:02d}_{w}x{h}.jpg" for k, (w, h, _c, _r) in enumerate(LAYOUTS)]
    if not force and manifest_path.exists() and all(f.exists() for f in files):
        try:
            current = json.loads(manifest_path.read_text())
        except ValueError:
            current = None
        if current and {k: current.get(k) for k in wanted if k != "libvips"} == {
            k: v for k, v in wanted.items() if k != "libvips"
        }:
            return files
    data = skimage_data_dir()
    rng = random.Random(SEED)
    np_rng = np.random.default_rng(SEED)
    log(f"building synthetic corpus in {out} from {data} ...")
    entries = []
    for path, (width, height, cols, rows) in zip(files, LAYOUTS, strict=True):
        image = _add_noise(_mosaic(width, height, cols, rows, rng, data), np_rng)
        image.jpegsave(
            str(path), Q=JPEG_QUALITY, subsample_mode="on", optimize_coding=True, keep="none"
        )
        entries.append(
            {"file": path.name, "width": width, "height": height, "bytes": path.stat().st_size}
        )
        log(f"  {path.name}: {width}x{height}, {path.stat().st_size / 1e6:.2f} MB")
    manifest_path.write_text(json.dumps({**wanted, "files": entries}, indent=2) + "\n")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    pyvips.cache_set_max(0)
    for path in build(args.out, force=args.force):
        print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VIPS_WARNING", "0")
    sys.exit(main())
