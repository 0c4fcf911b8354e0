"""Per-class IoU of the service's segmentation (background / skin / clothes) against the
hand-drawn labels of ``bench/regions_labels.json`` (issue 11).

Each labelled photo (gathered by ``bench/detection_data.py`` from the packages its manifest
pins; run that first) goes through a real server and a real local Triton as a
``DescribeImage`` with ``segment`` and ``segmentation_mask``; the returned class map (analysis
size, upright) is compared with the label polygons drawn at the same size. The labels' split
is by source package: the skin method's two tuned constants (``HALF_DISTANCE``,
``FACE_ELLIPSE`` in imagesvc/regions/skin.py) were chosen on the ``tuning`` photos only; the
``held_out`` ones were measured once, after.

    .venv/bin/python bench/skin_iou.py [--json FILE]

Prints, per photo and pooled over each split and all photos (pixels pooled), the IoU of
person (skin + clothes), skin, clothes and background, and the skin model the service used
("faces" or "prior").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
LABELS = BENCH / "regions_labels.json"
IMAGES = BENCH / "corpus" / "detection" / "images"
CLASSES = ("background", "skin", "clothes")


def label_map(labels: dict, width: int, height: int) -> np.ndarray:
    """Class per pixel (0 background, 1 skin, 2 clothes) from the percent polygons."""
    from skimage.draw import polygon

    def fill(polygons) -> np.ndarray:
        mask = np.zeros((height, width), bool)
        for points in polygons:
            points = np.asarray(points, float)
            rows, cols = polygon(
                points[:, 1] / 100 * height, points[:, 0] / 100 * width, (height, width)
            )
            mask[rows, cols] = True
        return mask

    person, skin = fill(labels["person"]), fill(labels["skin"])
    classes = np.zeros((height, width), np.uint8)
    classes[person] = 2
    classes[skin] = 1
    return classes


def ious(found: np.ndarray, truth: np.ndarray) -> dict[str, tuple[int, int]]:
    """(intersection, union) pixel counts per class and for the person (skin + clothes)."""
    counts = {}
    for index, name in enumerate(CLASSES):
        a, b = found == index, truth == index
        counts[name] = (int((a & b).sum()), int((a | b).sum()))
    a, b = found > 0, truth > 0
    counts["person"] = (int((a & b).sum()), int((a | b).sum()))
    return counts


def ratio(pair: tuple[int, int]) -> float | None:
    return pair[0] / pair[1] if pair[1] else None


async def measure(triton_url: str) -> list[dict]:
    import grpc
    import pyvips
    from prometheus_client import CollectorRegistry

    from imagesvc.server import app
    from imagesvc.settings import Settings
    from imagesvc.v1 import image_service_pb2 as pb
    from imagesvc.v1 import image_service_pb2_grpc as pb_grpc

    settings = Settings(
        port=0, metrics_port=0, triton_url=triton_url, triton_timeout_s=10.0, log_level="warning"
    )
    running = await app.start(settings, CollectorRegistry())
    rows = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            for photo, labels in json.loads(LABELS.read_text())["photos"].items():
                path = next(IMAGES.glob(f"{photo}.*"), None)
                if path is None:
                    raise SystemExit(f"{photo} is missing: run bench/detection_data.py first")
                request = pb.DescribeImageRequest(
                    source=pb.ImageSource(data=path.read_bytes()),
                    segment=True,
                    segmentation_mask=True,
                )
                response = await stub.DescribeImage(request, timeout=60)
                if not response.HasField("segmentation"):
                    raise SystemExit(f"{photo}: no segmentation: {list(response.degradations)}")
                mask = pyvips.Image.new_from_buffer(response.segmentation.mask_png, "")
                found = mask.numpy().reshape(mask.height, mask.width)
                truth = label_map(labels, mask.width, mask.height)
                rows.append(
                    {
                        "photo": photo,
                        "size": [mask.width, mask.height],
                        "skin_model": response.segmentation.skin_model,
                        "counts": ious(found, truth),
                    }
                )
    finally:
        await running.stop(1.0)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from inference.sidecar import TritonSidecar

    with TritonSidecar(grpc_port=0) as sidecar:
        rows = asyncio.run(measure(sidecar.grpc_url))
    names = ("person", "skin", "clothes", "background")
    split = json.loads(LABELS.read_text())["split"]
    print(f"{'photo':<20} {'skin model':<10} " + " ".join(f"{n:>10}" for n in names))
    pooled = {group: {n: [0, 0] for n in names} for group in (*split, "all")}
    for row in rows:
        cells = []
        groups = [g for g, photos in split.items() if row["photo"] in photos] + ["all"]
        for name in names:
            pair = row["counts"][name]
            for group in groups:
                pooled[group][name][0] += pair[0]
                pooled[group][name][1] += pair[1]
            value = ratio(pair)
            cells.append(f"{value:>10.3f}" if value is not None else f"{'-':>10}")
        print(f"{row['photo']:<20} {row['skin_model']:<10} " + " ".join(cells))
    for group, counts in pooled.items():
        cells = " ".join(f"{ratio(tuple(counts[n])):>10.3f}" for n in names)
        print(f"{group + ' (pooled)':<20} {'':<10} {cells}")
    if args.json is not None:
        args.json.write_text(json.dumps({"photos": rows, "pooled": pooled}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
