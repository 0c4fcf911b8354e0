"""Label the autoquality corpus with real encodes: for each sample and format, the service's
DSSIM (and bytes) at every quality of the grid, and the sample's features.

    .venv/bin/python inference/training/autoquality/label.py [--workers 2] [--limit N]

Run ``gather.py`` first. Encodes use the service's own savers with the service's default
options (`imagesvc.encoding.savers.save`, `imagesvc.encoding.spec`): JPEG as the encoder's
defaults (optimize_coding, 4:2:0 below Q 90 and 4:4:4 from 90, libvips' "auto"), WebP lossy
at the default effort (4), AVIF at the effort the autoquality search's trial encodes use
(`imagesvc.encoding.encoder.AVIF_SEARCH_EFFORT`, 0). DSSIM is `imagesvc.encoding.dssim`'s,
between the sample and its decoded encode: the labels mean what the service measures.

Each finished sample's encodes are appended to ``data/labels.jsonl`` (a rerun resumes where
it stopped; a changed grid or encoder setting starts again). The features are computed afresh
on every run, one sample at a time in this process (so ``feature_ms`` is what the service
pays; changing them never re-encodes), and everything is written to ``data/labels.npz``:

    ids [N] str, packages [N] str, split [N] str, width/height/bands [N] int
    formats [F] str, grid [G] int
    features [N, N_FEATURES] float32 (inference.autoquality.features)
    dssim [N, F, G] float64, bytes [N, F, G] int64
    seconds [N, F] (encodes + DSSIM of a format), feature_ms [N]
    thumbnails [N, 32, 32, 3] uint8 (the sample squeezed: the pixels-in comparison of train.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
sys.path.insert(0, str(REPO_ROOT))

from inference.autoquality import FEATURE_NAMES, FEATURES_VERSION  # noqa: E402

DATA = HERE / "data"
SAMPLES = DATA / "samples"
SAMPLES_JSON = DATA / "samples.json"
LABELS_JSONL = DATA / "labels.jsonl"
LABELS_NPZ = DATA / "labels.npz"

FORMATS = ("jpeg", "webp", "avif")
# Every 5 from 15 to 95, and 89: libvips' JPEG and AVIF "auto" chroma subsampling turns 4:4:4
# from Q 90, a step in the curve that interpolation between 85 and 90 would blur.
GRID = (15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 89, 90, 95)


def encoder_settings() -> dict:
    """What the labels depend on besides the image (a change relabels everything)."""
    from imagesvc.encoding.encoder import AVIF_SEARCH_EFFORT
    from imagesvc.encoding.spec import EncodingSpec

    import pyvips

    spec = EncodingSpec()
    return {
        "grid": list(GRID),
        "formats": list(FORMATS),
        "webp_effort": spec.webp_effort,
        "avif_effort": AVIF_SEARCH_EFFORT,
        "jpeg": repr(spec.jpeg),
        "webp": repr(spec.webp),
        "avif_subsample": spec.avif.subsample,
        "libvips": pyvips.version_string() if hasattr(pyvips, "version_string") else "",
    }


def _params(fmt: str, quality: int):
    from imagesvc.encoding.encoder import AVIF_SEARCH_EFFORT
    from imagesvc.encoding.savers import SaveParams
    from imagesvc.encoding.spec import EncodingSpec

    spec = EncodingSpec()
    if fmt == "jpeg":
        return SaveParams("jpeg", quality, spec=spec.jpeg)
    if fmt == "webp":
        return SaveParams("webp", quality, effort=spec.webp_effort, spec=spec.webp)
    if fmt == "avif":
        return SaveParams("avif", quality, effort=AVIF_SEARCH_EFFORT, spec=spec.avif)
    raise ValueError(fmt)


def label_one(sample_id: str) -> dict:
    """DSSIM and bytes at every grid quality, per format, of one sample."""
    import pyvips

    from imagesvc.encoding.dssim import DssimReference
    from imagesvc.encoding.savers import prepare, save

    image = pyvips.Image.new_from_file(str(SAMPLES / f"{sample_id}.png"), access="sequential")
    image = image.copy_memory()
    dssim, sizes, seconds = {}, {}, {}
    reference = None
    for fmt in FORMATS:
        started = time.perf_counter()
        prepared, keep = prepare(image, fmt, False, True)
        if reference is None:  # the same prepared pixels for every format (no alpha here)
            reference = DssimReference(prepared)
        values, lengths = [], []
        for quality in GRID:
            data = save(prepared, _params(fmt, quality), keep)
            lengths.append(len(data))
            values.append(reference.dssim_of(data))
        dssim[fmt], sizes[fmt] = values, lengths
        seconds[fmt] = time.perf_counter() - started
    return {
        "id": sample_id,
        "dssim": dssim,
        "bytes": sizes,
        "seconds": seconds,
    }


THUMBNAIL = 32


def thumbnail(sample_id: str) -> np.ndarray:
    """The sample squeezed to THUMBNAIL x THUMBNAIL sRGB (uint8): the input of the
    learned-from-pixels comparison in ``train.py cv``."""
    import pyvips

    image = pyvips.Image.new_from_file(str(SAMPLES / f"{sample_id}.png"))
    image = image.thumbnail_image(THUMBNAIL, height=THUMBNAIL, size="force")
    if image.bands == 1:
        image = image.colourspace("srgb")
    return image.numpy()


def _init_worker() -> None:
    import pyvips

    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)


def _same_header(old: dict, new: dict) -> bool:
    """Encodes depend on the settings, not on the features (computed afresh every run)."""
    old = json.loads(json.dumps(old))
    old.get("settings", {}).pop("features_version", None)
    return old == new


def sample_features(samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's features (inference.autoquality.features) and their cost in ms, in
    this process, one at a time (the cost the service pays)."""
    import pyvips

    from inference.autoquality import features

    rows, costs = [], []
    for sample in samples:
        image = pyvips.Image.new_from_file(str(SAMPLES / f"{sample['id']}.png")).copy_memory()
        started = time.perf_counter()
        rows.append(features(image))
        costs.append((time.perf_counter() - started) * 1000.0)
    return np.stack(rows), np.array(costs)


def label(workers: int, limit: int | None = None) -> dict:
    meta = json.loads(SAMPLES_JSON.read_text())
    samples = meta["samples"]
    if limit:
        # An even spread over the corpus (every k-th), for timing runs.
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    settings = encoder_settings()
    header = {"settings": settings, "samples_recipe": meta["recipe_version"]}
    done: dict[str, dict] = {}
    if LABELS_JSONL.is_file():
        lines = LABELS_JSONL.read_text().splitlines()
        if lines and _same_header(json.loads(lines[0]), header):
            for line in lines[1:]:
                record = json.loads(line)
                done[record["id"]] = record
        else:
            LABELS_JSONL.unlink()
    if not LABELS_JSONL.is_file():
        LABELS_JSONL.write_text(json.dumps(header) + "\n")
    todo = [s["id"] for s in samples if s["id"] not in done]
    # Largest first: the pool's last task is then a small one.
    size = {s["id"]: s["width"] * s["height"] for s in samples}
    todo.sort(key=lambda i: -size[i])
    started = time.perf_counter()
    with (
        LABELS_JSONL.open("a") as sink,
        ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool,
    ):
        for count, record in enumerate(pool.map(label_one, todo, chunksize=1), start=1):
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            done[record["id"]] = record
            if count % 25 == 0 or count == len(todo):
                elapsed = time.perf_counter() - started
                print(f"  {count}/{len(todo)} samples, {elapsed:.0f} s", flush=True)
    wall = time.perf_counter() - started
    records = [done[s["id"]] for s in samples]
    _init_worker()
    vectors, feature_ms = sample_features(samples)
    np.savez_compressed(
        LABELS_NPZ,
        ids=np.array([s["id"] for s in samples]),
        packages=np.array([s["package"] for s in samples]),
        split=np.array([s["split"] for s in samples]),
        width=np.array([s["width"] for s in samples]),
        height=np.array([s["height"] for s in samples]),
        bands=np.array([s["bands"] for s in samples]),
        formats=np.array(FORMATS),
        grid=np.array(GRID),
        feature_names=np.array(FEATURE_NAMES),
        features=vectors.astype(np.float32),
        dssim=np.array([[r["dssim"][f] for f in FORMATS] for r in records], dtype=np.float64),
        bytes=np.array([[r["bytes"][f] for f in FORMATS] for r in records], dtype=np.int64),
        seconds=np.array([[r["seconds"][f] for f in FORMATS] for r in records]),
        feature_ms=feature_ms,
        features_version=np.array(FEATURES_VERSION),
        settings=np.array(json.dumps(settings)),
        thumbnails=np.stack([thumbnail(s["id"]) for s in samples]),
    )
    return {"samples": len(samples), "labelled_now": len(todo), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--limit", type=int, default=None, help="label only N samples (timing)")
    args = parser.parse_args(argv)
    result = label(args.workers, args.limit)
    data = np.load(LABELS_NPZ)
    seconds = data["seconds"]
    pixels = (data["width"] * data["height"]).sum() / 1e6
    print(
        f"{result['samples']} samples ({pixels:.0f} MP) labelled, {result['labelled_now']} now "
        f"in {result['wall_s']:.0f} s wall with {args.workers} workers; CPU s per format: "
        + ", ".join(f"{f} {seconds[:, i].sum():.0f}" for i, f in enumerate(FORMATS))
        + f"; features {data['feature_ms'].mean():.1f} ms mean"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
