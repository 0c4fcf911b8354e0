"""Real-photo benchmark corpora, from the photographs bundled inside the scikit-image package.

Only files shipped in the ``skimage/data`` package directory are read (nothing is fetched). The
20 photographs among them (drawings, test charts and the tiny multi-page files are left out) are
written two ways:

* ``photos`` (``bench/corpus/photos/``): each photograph at its native size, 102x102 to
  1411x1411. The three bundled JPEGs (hubble_deep_field, retina, rocket) are copied byte for
  byte; the PNGs are saved as baseline JPEG q90 (4:2:0 for colour, no metadata). Most are
  smaller than the 720x720 box, so the job is decode + re-encode: small requests, where the
  process's fixed cost (imports, gRPC) dominates memory and time.
* ``photos-12mp`` (``bench/corpus/photos-12mp/``): each photograph upscaled (lanczos3) to about
  12 megapixels at its own aspect ratio (4000x3000 for 4:3), Gaussian noise (sigma 3) added as
  in ``corpus.py`` so the upscaled areas carry sensor-like detail, saved as JPEG q90 4:2:0. This
  is the size of a phone camera's photo: large requests, where libvips' and malloc's buffers
  dominate.

Grey photographs stay grey (one band), as a scanner or a camera would write them. The build is
deterministic (fixed seed) and is skipped when the manifest matches.

    .venv/bin/python bench/photos.py [--variant photos|photos-12mp] [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyvips

from corpus import skimage_data_dir  # bench/ is sys.path[0] when run as a script

RECIPE_VERSION = 1
JPEG_QUALITY = 90
NOISE_SIGMA = 3.0
SEED = 20261122
CAMERA_PIXELS = 12_000_000
VARIANTS = ("photos", "photos-12mp")

# The photographs in skimage/data (scikit-image 0.2x), by file name.
PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)


def default_dir(variant: str) -> Path:
    return Path(__file__).resolve().parent / "corpus" / variant


def _load(path: Path) -> pyvips.Image:
    image = pyvips.Image.new_from_file(str(path), access="random")
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    return image.cast("uchar")


def _camera(image: pyvips.Image, np_rng: np.random.Generator) -> pyvips.Image:
    scale = math.sqrt(CAMERA_PIXELS / (image.width * image.height))
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize(width / image.width, vscale=height / image.height, kernel="lanczos3")
    pixels = image.numpy().astype(np.float32)
    pixels += np_rng.normal(0.0, NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    np.clip(pixels, 0, 255, out=pixels)
    out = pyvips.Image.new_from_array(pixels.astype(np.uint8))
    return out.copy(interpretation="srgb" if out.bands == 3 else "b-w")


def manifest_for(variant: str) -> dict:
    return {
        "recipe_version": RECIPE_VERSION,
        "variant": variant,
        "seed": SEED,
        "jpeg_quality": JPEG_QUALITY,
        "noise_sigma": NOISE_SIGMA if variant == "photos-12mp" else 0,
        "camera_pixels": CAMERA_PIXELS if variant == "photos-12mp" else None,
        "photos": list(PHOTOS),
    }


def build(variant: str, out: Path | None = None, force: bool = False, log=print) -> list[Path]:
    """Build (or reuse) one variant in ``out``; returns the JPEG paths, sorted."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    out = default_dir(variant) if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    wanted = manifest_for(variant)
    if not force and manifest_path.exists():
        try:
            current = json.loads(manifest_path.read_text())
        except ValueError:
            current = {}
        files = [out / entry["file"] for entry in current.get("files", [])]
        if (
            {k: current.get(k) for k in wanted} == wanted
            and files
            and all(f.exists() for f in files)
        ):
            return sorted(files)
    for old in out.glob("*.jpg"):
        old.unlink()
    data = skimage_data_dir()
    np_rng = np.random.default_rng(SEED)
    log(f"building the {variant} corpus in {out} from {data} ...")
    entries = []
    for k, name in enumerate(PHOTOS):
        source = data / name
        stem = Path(name).stem
        if variant == "photos" and source.suffix == ".jpg":
            image = pyvips.Image.new_from_file(str(source))
            path = out / f"photo_{k:02d}_{stem}_{image.width}x{image.height}.jpg"
            shutil.copyfile(source, path)
        else:
            image = _load(source)
            if variant == "photos-12mp":
                image = _camera(image, np_rng)
            path = out / f"photo_{k:02d}_{stem}_{image.width}x{image.height}.jpg"
            image.jpegsave(
                str(path), Q=JPEG_QUALITY, subsample_mode="on", optimize_coding=True, keep="none"
            )
        size = path.stat().st_size
        entries.append({"file": path.name, "width": image.width, "height": image.height})
        entries[-1]["bytes"] = size
        log(f"  {path.name}: {image.width}x{image.height}, {size / 1e6:.2f} MB")
    manifest_path.write_text(json.dumps({**wanted, "files": entries}, indent=2) + "\n")
    return sorted(out / e["file"] for e in entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="photos")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    pyvips.cache_set_max(0)
    for path in build(args.variant, args.out, force=args.force):
        print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VIPS_WARNING", "0")
    sys.exit(main())
