"""Gather the autoquality corpus: wallpapers from pinned Debian packages and scikit-image's
bundled photographs, expanded with seeded crops and resizes to the sizes people serve.

    .venv/bin/python inference/training/autoquality/gather.py [--force]
    .venv/bin/python inference/training/autoquality/gather.py --write-manifest   # maintainers

Every source image is a member file of a pinned package: the Debian packages are fetched with
``apt-get download <name>=<version>`` (run ``apt-get update`` once on the machine first), or,
for other releases of two of them (``OTHER_DEBIAN_RELEASES``: designs the pinned release
does not have), from the pool of the Debian archive the machine's apt sources name (its
``pool_path`` in the manifest); each is checked against the sha256
in ``manifest.json`` (committed), as is every member read from them. scikit-image's photographs
come from the scikit-image installed in the service's venv (version pinned there and checked
here). Nothing else is fetched. gnome-backgrounds 48 ships JPEG XL, which libvips here does not
read: ``djxl`` (Debian's ``libjxl-tools``, installed with apt-get when missing) decodes it.

Output, in ``data/`` beside this file (gitignored):

    data/downloads/<package>.deb    the packages as fetched
    data/samples/<id>.png           one PNG per sample: the image at output size, 8-bit sRGB
                                    (or grey), no alpha, as the encoder gets it
    data/samples.json               one record per sample: id, source package and member,
                                    crop box, size, bands, split ("train" or "held_out")

The expansion (seed ``SEED``): each source gives ``VARIANTS`` samples; variant 0 is the whole
image, the others a crop of 25-100 % of its area at a common aspect ratio. Each is resized
(lanczos3, never enlarged) to a long side drawn log-uniformly from 160-1920 px (variants
1..N-1; variant 0 from 160-1280 px), and one in ten colour samples is made grey. Sources
larger than ``SOURCE_MAX`` px are first reduced to it (a wallpaper at 5640 px and at 3840 px
is the same picture). The held-out split is a whole source package (``HELD_OUT``), so no crop
of a held-out picture is ever trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
MANIFEST = HERE / "manifest.json"
DATA = HERE / "data"
DOWNLOADS = DATA / "downloads"
SAMPLES = DATA / "samples"
SAMPLES_JSON = DATA / "samples.json"

RECIPE_VERSION = 1
SEED = 20261201
VARIANTS = 6
SOURCE_MAX = 2560
LONG_SIDE = (160, 1920)
WHOLE_LONG_SIDE = (160, 1280)
MIN_AREA = 0.25
GREY_SHARE = 0.1
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16)
# The source package held out of training (the model is never fitted on any crop of its
# pictures): chosen before any training, as the one package with both photographs (its
# "nature" set) and graphics, so that the figures on it speak for both; training keeps
# scikit-image's photographs.
HELD_OUT = ("mate-backgrounds",)

# What each package contributes (member paths inside the .deb / scikit-image's package
# folder); --write-manifest records them with their sha256. One picture per design: where a
# package ships one picture at several sizes, the largest not above SOURCE_MAX-ish is taken.
DEBIAN_PACKAGES = {
    "gnome-backgrounds": {
        "version": "43.1-1",
        "licence": "GPL-2+ (package); adwaita-*: CC-BY-SA-3.0, Jakub Steiner "
        "(/usr/share/doc/gnome-backgrounds/copyright)",
        "members": [
            f"usr/share/backgrounds/gnome/{name}-{shade}.{ext}"
            for name, ext in (
                ("adwaita", "webp"),
                ("grid", "webp"),
                ("licorice", "webp"),
                ("pixels", "webp"),
                ("symbolic", "webp"),
                ("truchet", "webp"),
                ("wood", "webp"),
                ("blobs", "svg"),
                ("drool", "svg"),
                ("dune", "svg"),
                ("field", "svg"),
            )
            for shade in ("d", "l")
        ]
        + ["usr/share/backgrounds/gnome/oceans.svg"],
    },
    "mate-backgrounds": {
        "version": "1.26.0-1",
        "licence": "GPL-2+, Ubuntu-Mate-*-no-logo.png CC-BY-SA-4.0 "
        "(/usr/share/doc/mate-backgrounds/copyright)",
        "members": [
            f"usr/share/backgrounds/mate/{path}"
            for path in (
                "abstract/Arc-Colors-Transparent-Wallpaper.png",
                "abstract/Elephants_3840x2160.jpg",
                "abstract/Flow.png",
                "abstract/Gulp.png",
                "abstract/Silk.png",
                "abstract/Spring.png",
                "abstract/Waves.png",
                "desktop/Float-into-MATE.png",
                "desktop/GreenTraditional.jpg",
                "desktop/MATE-Stripes-Dark.png",
                "desktop/MATE-Stripes-Light.png",
                "desktop/Stripes.png",
                "desktop/Ubuntu-Mate-Cold-no-logo.png",
                "desktop/Ubuntu-Mate-Dark-no-logo.png",
                "desktop/Ubuntu-Mate-Radioactive-no-logo.png",
                "desktop/Ubuntu-Mate-Warm-no-logo.png",
                "nature/Aqua.jpg",
                "nature/Blinds.jpg",
                "nature/Dune.jpg",
                "nature/FreshFlower.jpg",
                "nature/Garden.jpg",
                "nature/GreenMeadow.jpg",
                "nature/LadyBird.jpg",
                "nature/RainDrops.jpg",
                "nature/Storm.jpg",
                "nature/TwoWings.jpg",
                "nature/Wood.jpg",
                "nature/YellowFlower.jpg",
            )
        ],
    },
    "sway-backgrounds": {
        "version": "1.7-6",
        "licence": "Expat (/usr/share/doc/sway-backgrounds/copyright)",
        "members": [
            "usr/share/backgrounds/sway/Sway_Wallpaper_Blue_2048x1536.png",
            "usr/share/backgrounds/sway/Sway_Wallpaper_Blue_768x1024_Portrait.png",
        ],
    },
    "lomiri-wallpapers": {
        "version": "20.04.0-2",
        "licence": "CC-BY-SA-3.0 (warty-final-ubuntu.png; /usr/share/doc/lomiri-wallpapers/"
        "copyright)",
        "members": ["usr/share/backgrounds/warty-final-ubuntu.png"],
    },
    "desktop-base": {
        "version": "12.0.6+nmu1~deb12u1",
        "licence": "GPL-2+ (themes by Juliette Taka, Adrien Aubourg, Alex Makas), spacefun "
        "GPL-2 (Valessio Brito) (/usr/share/doc/desktop-base/copyright)",
        "members": [
            f"usr/share/desktop-base/{theme}-theme/wallpaper/contents/images/1920x1080.svg"
            for theme in (
                "emerald",
                "futureprototype",
                "homeworld",
                "joy-inksplat",
                "joy",
                "lines",
                "moonlight",
                "softwaves",
                "spacefun",
            )
        ]
        + [
            f"usr/share/desktop-base/{path}"
            for path in (
                "joy-theme/login/sddm-preview.jpg",
                "lines-theme/login/sddm-preview.jpg",
                "softwaves-theme/login/sddm-preview.jpg",
                "spacefun-theme/login/sddm-preview.jpg",
            )
        ]
        + [
            "usr/share/plasma/look-and-feel/org.debian.desktop/contents/previews/fullscreenpreview.jpg"
        ],
    },
}
# scikit-image's photographs (as bench/photos.py): licences from each loader's docstring in
# skimage/data/_fetchers.py: public domain or CC0, "no known copyright restrictions" for
# coins, immunohistochemistry, moon, motorcycle, page, text.
# Other releases of the packages above, for the designs the pinned release does not ship
# (2026-12-03: the model's error on unseen packages fell steeply with the number of training
# pictures, train README "More pictures"). Listed after scikit-image in the manifest, so that
# the earlier sources keep their sample ids and crops. Same source packages as above, so the
# split and the leave-one-package-out groups count them as those packages.
OTHER_DEBIAN_RELEASES = {
    "gnome-backgrounds-48": {
        "name": "gnome-backgrounds",
        "version": "48.2.1-1",
        "pool": "pool/main/g/gnome-backgrounds",
        "licence": "GPL-2+ (package; /usr/share/doc/gnome-backgrounds/copyright)",
        # The designs 43.1 does not ship (blobs, drool, pixels, symbolic: already there).
        "members": [
            f"usr/share/backgrounds/gnome/{name}-{shade}.{ext}"
            for name, ext in (
                ("amber", "jxl"),
                ("fold", "jxl"),
                ("geometrics", "jxl"),
                ("glass-chip", "jxl"),
                ("lcd", "jxl"),
                ("lcd-rainbow", "jxl"),
                ("neogeo", "jxl"),
                ("pills", "jxl"),
                ("pride", "jxl"),
                ("progress", "jxl"),
                ("ring", "jxl"),
                ("sheet", "jxl"),
                ("swoosh", "jxl"),
                ("symbolic-soup", "jxl"),
                ("tarka", "jxl"),
                ("map", "svg"),
                ("mollnar", "svg"),
                ("morphogenesis", "svg"),
                ("vnc", "png"),
            )
            for shade in ("d", "l")
        ],
    },
    "desktop-base-13": {
        "name": "desktop-base",
        "version": "13.0.4",
        "pool": "pool/main/d/desktop-base",
        "licence": "GPL-2+ (ceratopsian-theme, 2024 Elise Couper; /usr/share/doc/desktop-base/"
        "copyright)",
        "members": [
            "usr/share/desktop-base/ceratopsian-theme/wallpaper/contents/images/1920x1080.svg"
        ],
    },
    "gnome-backgrounds-3.38": {
        "name": "gnome-backgrounds",
        "version": "3.38.0-1",
        "pool": "pool/main/g/gnome-backgrounds",
        "licence": "GPL-2+ (package); adwaita-*: CC-BY-SA-3.0, Jakub Steiner; Dark_Ivy, Road: "
        "CC-BY-SA-3.0, Garrett LeSage (/usr/share/doc/gnome-backgrounds/copyright)",
        # Its photographs and designs that 43.1 replaced (Wood: 43.1 has it; VNC: 580 bytes).
        "members": [
            f"usr/share/backgrounds/gnome/{name}.jpg"
            for name in (
                "Acrylic",
                "ColdWarm",
                "Dark_Ivy",
                "Endless-shapes",
                "Icetwigs",
                "LightWaves",
                "Road",
                "SeaSunset",
                "Stripes",
                "Symbolics-1",
                "Symbolics-2",
                "adwaita-day",
                "adwaita-morning",
                "adwaita-night",
            )
        ],
    },
}
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The Debian archive this machine's apt is set up with (its main, not security, entry):
    the other releases come from that archive's pool, as apt-get would fetch them."""
    entries: list[str] = []
    for path in sources:
        files = (
            sorted(path.glob("*.sources")) + sorted(path.glob("*.list"))
            if path.is_dir()
            else [path]
        )
        for file in files:
            if not file.is_file():
                continue
            for line in file.read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] == ["URIs:"]:
                    entries += words[1:]
                elif words[:1] == ["deb"]:
                    entries += [w for w in words[1:] if "://" in w][:1]
    for uri in entries:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise RuntimeError(
        "no Debian archive in the apt sources (" + ", ".join(map(str, sources)) + ")"
    )


SKIMAGE_PHOTOS = (
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
SKIMAGE_LICENCE = (
    "BSD-3-Clause (package); the photographs public domain or CC0, or with no known "
    "copyright restrictions, per skimage/data/_fetchers.py"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deb_file(name: str, version: str) -> str:
    # apt-get download names the file <name>_<version with ':' as %3a>_<arch>.deb
    return f"{name}_{version.replace(':', '%3a')}_all.deb"


def fetch(package: dict) -> Path:
    target = DOWNLOADS / package["file"]
    if not target.is_file():
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        spec = f"{package['name']}={package['version']}"
        if package.get("pool_path"):  # a release the machine's apt sources do not list
            import urllib.request

            partial = target.with_suffix(".part")
            url = f"{debian_mirror()}/{package['pool_path']}"
            with urllib.request.urlopen(url, timeout=120) as response:
                partial.write_bytes(response.read())
            partial.rename(target)
        else:
            subprocess.run(["apt-get", "download", spec], cwd=DOWNLOADS, check=True)
        if not target.is_file():
            raise RuntimeError(f"{spec}: expected {target.name} in {DOWNLOADS}")
    if package.get("sha256"):
        digest = sha256(target.read_bytes())
        if digest != package["sha256"]:
            raise RuntimeError(f"{target.name}: sha256 {digest}, manifest {package['sha256']}")
    return target


def deb_members(deb: Path, members: list[str]) -> dict[str, bytes]:
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    wanted = {f"./{m}": m for m in members} | {m: m for m in members}
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for info in archive:
            if info.name in wanted and info.isfile():
                found[wanted[info.name]] = archive.extractfile(info).read()
    missing = sorted(set(members) - set(found))
    if missing:
        raise KeyError(f"{deb.name}: no {missing}")
    return found


def skimage_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def write_manifest() -> dict:
    """Fetch every pinned package and record its sha256 and each member's (maintainers)."""
    import skimage

    def debian(key: str, spec: dict) -> dict:
        name = spec.get("name", key)
        package = {
            "key": key,
            "registry": "debian",
            "name": name,
            "version": spec["version"],
            "file": deb_file(name, spec["version"]),
            "licence": spec["licence"],
        }
        if spec.get("pool"):
            package["pool_path"] = f"{spec['pool']}/{package['file']}"
        deb = fetch(package)
        package["sha256"] = sha256(deb.read_bytes())
        data = deb_members(deb, spec["members"])
        package["members"] = [{"path": m, "sha256": sha256(data[m])} for m in spec["members"]]
        return package

    packages = [debian(key, spec) for key, spec in DEBIAN_PACKAGES.items()]
    folder = skimage_dir()
    packages.append(
        {
            "key": "scikit-image",
            "registry": "venv",
            "name": "scikit-image",
            "version": skimage.__version__,
            "licence": SKIMAGE_LICENCE,
            "members": [
                {"path": f"skimage/data/{p}", "sha256": sha256((folder / p).read_bytes())}
                for p in SKIMAGE_PHOTOS
            ],
        }
    )
    packages += [debian(key, spec) for key, spec in OTHER_DEBIAN_RELEASES.items()]
    manifest = {
        "about": "Sources of the autoquality corpus (inference/training/autoquality/gather.py): "
        "pinned packages, their sha256 and that of every member file used. The pictures are "
        "not committed; the licences are the packages' (debian/copyright) and scikit-image's.",
        "recipe_version": RECIPE_VERSION,
        "seed": SEED,
        "held_out": list(HELD_OUT),
        "packages": packages,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def source_bytes(manifest: dict) -> list[tuple[str, str, bytes]]:
    """(package, member, bytes) of every source, in manifest order, each sha256-checked."""
    out = []
    for package in manifest["packages"]:
        members = [m["path"] for m in package["members"]]
        if package["registry"] == "venv":
            import skimage

            if skimage.__version__ != package["version"]:
                raise RuntimeError(
                    f"scikit-image {skimage.__version__} installed, manifest pins "
                    f"{package['version']}"
                )
            root = skimage_dir().parents[1]
            data = {m: (root / m).read_bytes() for m in members}
        else:
            data = deb_members(fetch(package), members)
        for member in package["members"]:
            blob = data[member["path"]]
            if sha256(blob) != member["sha256"]:
                raise RuntimeError(f"{package['key']}:{member['path']}: sha256 mismatch")
            # Samples are counted by source package: a later release is the same package.
            out.append((package["name"], member["path"], blob))
    return out


def decode_jxl(blob: bytes) -> bytes:
    """A JPEG XL picture as PNG bytes, by ``djxl`` (installed from Debian when missing)."""
    import shutil
    import tempfile

    if shutil.which("djxl") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "libjxl-tools"], check=True
        )
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.jxl", Path(folder) / "out.png"
        source.write_bytes(blob)
        subprocess.run(["djxl", str(source), str(target)], check=True, capture_output=True)
        return target.read_bytes()


def load_source(blob: bytes, member: str):
    """The picture as 8-bit sRGB (or grey), alpha flattened onto white, at most SOURCE_MAX
    px on its long side."""
    import pyvips

    if member.endswith(".svg"):
        image = pyvips.Image.svgload_buffer(blob)
        scale = min(1.0, SOURCE_MAX / max(image.width, image.height))
        if scale < 1.0:
            image = pyvips.Image.svgload_buffer(blob, scale=scale)
    else:
        if member.endswith(".jxl"):
            blob = decode_jxl(blob)
        image = pyvips.Image.new_from_buffer(blob, "")
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    grey = image.bands == 1 or image.interpretation in ("b-w", "grey16")
    image = image.colourspace("b-w" if grey else "srgb").cast("uchar")
    if image.bands not in (1, 3):
        image = image.extract_band(0, n=1 if grey else 3)
    long_side = max(image.width, image.height)
    if long_side > SOURCE_MAX:
        image = image.resize(SOURCE_MAX / long_side, kernel="lanczos3")
    return image.copy_memory()


def plan_variant(rng: np.random.Generator, width: int, height: int, variant: int) -> dict:
    """Crop box and output size of one variant (pure: the recipe, seeded by ``rng``)."""
    if variant == 0:
        box = (0, 0, width, height)
        lo, hi = WHOLE_LONG_SIDE
    else:
        area = rng.uniform(MIN_AREA, 1.0) * width * height
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
        # At least LONG_SIDE[0] px on the long side where the picture allows it.
        side = max(math.sqrt(area * aspect), min(LONG_SIDE[0], width) * min(1.0, aspect))
        cw = min(width, round(side))
        ch = min(height, round(cw / aspect))
        cw = min(width, round(ch * aspect))
        x = int(rng.integers(0, width - cw + 1))
        y = int(rng.integers(0, height - ch + 1))
        box = (x, y, cw, ch)
        lo, hi = LONG_SIDE
    long_side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    scale = min(1.0, long_side / max(box[2], box[3]))
    grey = bool(rng.random() < GREY_SHARE)
    return {"box": box, "scale": scale, "grey": grey}


def make_sample(image, plan: dict):
    x, y, w, h = plan["box"]
    out = image.crop(x, y, w, h)
    if plan["scale"] < 1.0:
        out = out.resize(plan["scale"], kernel="lanczos3")
    if plan["grey"] and out.bands == 3:
        out = out.colourspace("b-w").cast("uchar")
    return out


def gather(force: bool = False) -> list[dict]:
    manifest = load_manifest()
    held_out = set(manifest["held_out"])
    if SAMPLES_JSON.is_file() and not force:
        existing = json.loads(SAMPLES_JSON.read_text())
        if existing.get("recipe_version") == RECIPE_VERSION and existing.get("manifest") == sha256(
            MANIFEST.read_bytes()
        ):
            if all((SAMPLES / f"{s['id']}.png").is_file() for s in existing["samples"]):
                return existing["samples"]
    SAMPLES.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, (package, member, blob) in enumerate(source_bytes(manifest)):
        image = load_source(blob, member)
        rng = np.random.default_rng([manifest["seed"], index])
        for variant in range(VARIANTS):
            plan = plan_variant(rng, image.width, image.height, variant)
            out = make_sample(image, plan)
            sample_id = f"{index:03d}-{variant}"
            out.pngsave(str(SAMPLES / f"{sample_id}.png"), compression=1)
            samples.append(
                {
                    "id": sample_id,
                    "package": package,
                    "member": member,
                    "source": index,
                    "variant": variant,
                    "box": list(plan["box"]),
                    "width": out.width,
                    "height": out.height,
                    "bands": out.bands,
                    "split": "held_out" if package in held_out else "train",
                }
            )
    SAMPLES_JSON.write_text(
        json.dumps(
            {
                "recipe_version": RECIPE_VERSION,
                "manifest": sha256(MANIFEST.read_bytes()),
                "samples": samples,
            },
            indent=0,
        )
        + "\n"
    )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="write every sample again")
    parser.add_argument(
        "--write-manifest",
        action="store_true",
        help="fetch the pinned packages and (re)write manifest.json with their sha256",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    started = time.perf_counter()
    if args.write_manifest:
        write_manifest()
        print(f"wrote {MANIFEST.relative_to(REPO_ROOT)}")
        return 0
    samples = gather(force=args.force)
    by_package: dict[str, int] = {}
    for s in samples:
        by_package[s["package"]] = by_package.get(s["package"], 0) + 1
    pixels = sum(s["width"] * s["height"] for s in samples)
    print(
        f"{len(samples)} samples ({pixels / 1e6:.0f} MP) in {SAMPLES.relative_to(REPO_ROOT)}, "
        f"{time.perf_counter() - started:.0f} s; per package: "
        + ", ".join(f"{k} {v}" for k, v in by_package.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
