"""The README's picture of region-aware compression (issue 11): one photo as the source, its
regions (draw_segmentation), plain DSSIM autoquality and region-aware autoquality, side by side
with their byte sizes, all made by a real server over gRPC with a real local Triton.

    .venv/bin/python bench/regions_picture.py [--photo astronaut] [--format jpeg]
                                              [--out docs/images/regions-astronaut.jpg]

``--photo`` is an id of bench/detection_manifest.json (run bench/detection_data.py first) or
"astronaut" (scikit-image's, always there). Prints the sizes and the person-region DSSIM the
service reported for both encodes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
PANEL = 360


def source_bytes(photo: str) -> bytes:
    path = next((BENCH / "corpus" / "detection" / "images").glob(f"{photo}.*"), None)
    if path is not None:
        return path.read_bytes()
    if photo == "astronaut":
        import pyvips
        from skimage import data

        return pyvips.Image.new_from_array(data.astronaut()).pngsave_buffer()
    raise SystemExit(f"{photo}: not found; run bench/detection_data.py first")


async def render(triton_url: str, photo: str, fmt: str, out: Path) -> None:
    import grpc
    import pyvips
    from prometheus_client import CollectorRegistry

    from imagesvc.server import app
    from imagesvc.settings import Settings
    from imagesvc.v1 import image_service_pb2 as pb
    from imagesvc.v1 import image_service_pb2_grpc as pb_grpc

    image_format = {
        "jpeg": pb.IMAGE_FORMAT_JPEG,
        "webp": pb.IMAGE_FORMAT_WEBP,
        "avif": pb.IMAGE_FORMAT_AVIF,
    }[fmt]
    data = source_bytes(photo)
    settings = Settings(
        port=0, metrics_port=0, triton_url=triton_url, triton_timeout_s=10.0, log_level="warning"
    )
    running = await app.start(settings, CollectorRegistry())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            source = pb.ImageSource(data=data)
            dssim = pb.Autoquality(method=pb.AUTOQUALITY_METHOD_DSSIM)
            overlay = await stub.ProcessImage(
                pb.ProcessImageRequest(
                    source=source,
                    pipelines=[
                        pb.Pipeline(
                            operations=[pb.Operation(draw_segmentation=pb.DrawSegmentation())]
                        )
                    ],
                    output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
                ),
                timeout=60,
            )
            plain = await stub.ProcessImage(
                pb.ProcessImageRequest(
                    source=source, output=pb.OutputOptions(format=image_format, autoquality=dssim)
                ),
                timeout=60,
            )
            aware = await stub.ProcessImage(
                pb.ProcessImageRequest(
                    source=source,
                    output=pb.OutputOptions(
                        format=image_format,
                        autoquality=dssim,
                        regions=pb.RegionQuality(enabled=True),
                    ),
                ),
                timeout=60,
            )
    finally:
        await running.stop(1.0)
    if aware.degradations:
        raise SystemExit(f"region-aware encode degraded: {list(aware.degradations)}")
    regions = {r.region: r.dssim for r in aware.encoding.region_dssim}
    print(
        f"plain {fmt}: {len(plain.data)} bytes, q{plain.encoding.quality}, DSSIM {plain.encoding.achieved_dssim:.4f}"
    )
    print(
        f"region-aware {fmt}: {len(aware.data)} bytes, q{aware.encoding.quality}, "
        + ", ".join(f"{k} DSSIM {v:.4f}" for k, v in regions.items())
    )
    print(f"saving: {1 - len(aware.data) / len(plain.data):.1%}")
    panels = [
        (pyvips.Image.new_from_buffer(data, ""), f"source ({len(data) // 1024} KiB)"),
        (pyvips.Image.new_from_buffer(overlay.data, ""), "regions: skin, clothes"),
        (
            pyvips.Image.new_from_buffer(plain.data, ""),
            f"plain DSSIM {fmt}: {len(plain.data) // 1024} KiB",
        ),
        (
            pyvips.Image.new_from_buffer(aware.data, ""),
            f"region-aware {fmt}: {len(aware.data) // 1024} KiB",
        ),
    ]
    tiles = []
    for image, caption in panels:
        if image.bands == 1:
            image = image.colourspace("srgb")
        image = image.flatten() if image.hasalpha() else image
        image = image.thumbnail_image(PANEL, height=PANEL)
        text = pyvips.Image.text(caption, dpi=90)
        label = (
            pyvips.Image.black(image.width, text.height + 8, bands=3)
            .new_from_image([255, 255, 255])
            .copy(interpretation="srgb")
        )
        label = label.draw_mask([0, 0, 0], text, 4, 4)
        tiles.append(
            image.cast("uchar").join(label.cast("uchar"), "vertical", background=[255, 255, 255])
        )
    pyvips.Image.arrayjoin(tiles, across=4, shim=6, background=[255, 255, 255]).write_to_file(
        str(out), Q=88, strip=True
    )
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="astronaut")
    parser.add_argument("--format", default="jpeg", choices=("jpeg", "webp", "avif"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "images" / "regions-astronaut.jpg"
    )
    args = parser.parse_args()
    from inference.sidecar import TritonSidecar

    with TritonSidecar(grpc_port=0) as sidecar:
        asyncio.run(render(sidecar.grpc_url, args.photo, args.format, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
