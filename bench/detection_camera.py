"""What a thumbnail's coarse detector input costs in faces (IMAGESVC_DETECTION_MIN_SIDE).

    .venv/bin/python bench/detection_data.py            # once: fetch the photos
    .venv/bin/python bench/detection_camera.py [--sizes 2448,2592,3000,4000] [--min-side 288]

The labelled photos of ``bench/detection.py`` are mostly small; a thumbnail's coarse input only
exists for camera-size sources (long side >= 2048 px). So each labelled photo is upscaled
(lanczos3, JPEG q90) to each long side in ``--sizes`` (a photo already that large is skipped),
its labels scaled with it, and the first detection pass (``inference.client.Detector.detect``,
class ``face``, through the local Triton sidecar) runs on the two first inputs the engine can
make from the bytes: the full one (``imagesvc.engine.preview_shrink`` at
IMAGESVC_DETECTION_MAX_SIDE, what DescribeImage and every request that draws, blurs or crops to
the faces gets) and a thumbnail's (the same with ``--min-side``), the latter once with both
BlazeFace models and twice with the thumbnail's models (``Detector.detect(..., thumbnail=True)``:
the full-range model alone): on the input at IMAGESVC_DETECTION_MAX_SIDE, and brought down by
libvips to the side those models look at (``Detector.input_side``, 192 px), what the service
runs there (``Engine._first_input_side``). "faces a thumbnail shows" counts the
labelled faces at least 16 px tall in a 256 px long-side drawing
(``face_refine.MIN_OUTPUT_FACE_PX``). Faces are matched as in ``bench/detection.py`` (IoU >= 0.3).
Prints recall and false boxes per input, and every photo
where the two differ. Only the first pass: it is all a thumbnail gets (the tiled pass is skipped
where its faces could not show).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)


async def measure(url: str, sizes: list[int], min_side: int) -> dict:
    import pyvips
    from detection import LABELS, load_photos, match
    from detection_data import load_manifest

    from imagesvc import vips
    from imagesvc.context import StepContext
    from imagesvc.engine import Engine, open_header, preview_shrink
    from imagesvc.settings import Settings
    from imagesvc.telemetry.metrics import NullMetrics
    from inference.client import Detector
    from inference.face_refine import MIN_OUTPUT_FACE_PX

    settings = Settings(workers=1)
    vips.configure(settings)
    engine = Engine(settings, None, NullMetrics())
    detector = Detector(url, timeout_s=30.0)
    started = time.monotonic()
    while not await detector.ready():
        if time.monotonic() - started > 120:
            raise SystemExit("Triton's face models did not become ready")
        await asyncio.sleep(0.5)
    # name -> (the input's min side, Detector.detect's ``thumbnail``, its long side)
    models_side = detector.input_side(frozenset({"face"}), thumbnail=True)
    max_side = settings.detection_max_side
    inputs = {
        "full": (None, False, max_side),
        "thumbnail": (min_side, False, max_side),
        "thumbnail, its models": (min_side, True, max_side),
        f"thumbnail, its models, at {models_side} px": (min_side, True, models_side),
    }
    totals = {
        name: {
            "found": 0,
            "faces": 0,
            "shown_found": 0,
            "shown": 0,
            "false": 0,
            "false_free": 0,
            "face_free": 0,
        }  # fmt: skip
        for name in inputs
    }
    differences = []
    photos = load_photos(load_manifest(), json.loads(LABELS.read_text()))
    try:
        for size in sizes:
            for photo in photos:
                image = pyvips.Image.new_from_file(str(photo["path"])).autorot()
                factor = size / max(image.width, image.height)
                if factor <= 1:
                    continue
                data = image.resize(factor, kernel="lanczos3").jpegsave_buffer(Q=90)
                faces = [tuple(v * factor for v in box) for box in photo["faces"]]
                ignore = [tuple(v * factor for v in box) for box in photo["ignore"]]
                header = open_header(data, settings)
                # The faces a 256 px long-side thumbnail shows (the others are ignored there).
                shown = [f for f in faces if f[3] * 256 / size >= MIN_OUTPUT_FACE_PX]
                hidden = [f for f in faces if f not in shown]
                row = {}
                for name, (minimum, thumbnail, side) in inputs.items():
                    shrink = preview_shrink(header, settings.detection_max_side, minimum)
                    ctx = StepContext(settings, time.monotonic() + 60, header.oriented_size)
                    rgb = engine._separate_preview(header, data, shrink, ctx, side)
                    found = await detector.detect(
                        rgb, classes=frozenset({"face"}), thumbnail=thumbnail
                    )
                    to_source = header.oriented_size[0] / rgb.shape[1]
                    detections = [
                        (
                            tuple(v * to_source for v in (d.left, d.top, d.width, d.height)),
                            d.confidence,
                        )
                        for d in found
                    ]
                    m = match(detections, faces, ignore)
                    total = totals[name]
                    total["found"] += len(m.hits)
                    total["faces"] += len(faces)
                    total["shown_found"] += len(match(detections, shown, ignore + hidden).hits)
                    total["shown"] += len(shown)
                    total["false"] += len(m.false)
                    total["face_free"] += not faces
                    total["false_free"] += 0 if faces else len(m.false)
                    row[name] = (len(m.hits), len(m.false), max(rgb.shape[:2]))
                if len({found[:2] for found in row.values()}) > 1:
                    differences.append({"photo": photo["id"], "size": size, **row})
    finally:
        await detector.close()
        engine.close()
    return {"totals": totals, "differences": differences}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2448,2592,3000,4000")
    parser.add_argument("--min-side", type=int, default=288)
    parser.add_argument("--triton-url", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.triton_url:
        result = asyncio.run(measure(args.triton_url, sizes, args.min_side))
    else:
        from inference.sidecar import TritonSidecar

        with TritonSidecar(grpc_port=0) as sidecar:
            result = asyncio.run(measure(sidecar.grpc_url, sizes, args.min_side))
    print(
        "| first input | faces found | faces a thumbnail shows, found | false boxes | "
        "false boxes per face-free photo |"
    )
    print("|---|---|---|---|---|")
    for name, total in result["totals"].items():
        print(
            f"| {name} | {total['found']}/{total['faces']} | "
            f"{total['shown_found']}/{total['shown']} | {total['false']} | "
            f"{total['false_free'] / max(total['face_free'], 1):.3f} ({total['false_free']} "
            f"on {total['face_free']}) |"
        )
    print("\n(hits, false boxes, input long side) where the inputs differ:")
    for row in result["differences"]:
        found = ", ".join(f"{name} {row[name]}" for name in result["totals"])
        print(f"  {row['size']} {row['photo']}: {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
