"""The request planner's cost model against measurements: CPU and peak memory per request.

Each case runs one ProcessImage request through the engine in a fresh process (one libvips
thread, as the service runs it) and prints what it measured next to what the planner estimated
(``imagesvc.planning``): CPU-seconds of the request, and the peak resident memory above the
process's state just before the request (the request's source bytes excluded on both sides).
The constants in ``imagesvc/planning/costs.py`` were fitted to this output on the development VM;
run it on other hardware to see how far its figures move.

    .venv/bin/python bench/cost_model.py [--only SUBSTRING] [--json FILE]

A ratio estimate/measured under 1 means the planner under-estimates that case: the budget would
let a request through that costs more than it says (the deadline still stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORCE = {"type": "RESIZING_TYPE_FORCE", "enlarge": True}

# (name, source format, width, height, bands, bits, pipelines, output format)
CASES = [
    ("decode jpeg", "jpeg", 4000, 3000, 3, 8, [], "jpeg"),
    ("decode jpeg progressive", "jpeg-progressive", 3000, 2000, 3, 8, [], "jpeg"),
    ("decode png", "png", 3000, 2000, 3, 8, [], "jpeg"),
    ("decode png interlaced", "png-interlaced", 3000, 2000, 3, 8, [], "jpeg"),
    ("decode png rgba16", "png", 3000, 2000, 4, 16, [], "jpeg"),
    ("decode webp", "webp", 3000, 2000, 3, 8, [], "jpeg"),
    ("decode avif", "avif", 2000, 1500, 3, 8, [], "jpeg"),
    ("decode gif", "gif", 1500, 1000, 3, 8, [], "jpeg"),
    ("decode tiff", "tiff", 3000, 2000, 3, 8, [], "jpeg"),
    ("encode png", "jpeg", 3000, 2000, 3, 8, [], "png"),
    ("encode png rgba", "png", 3000, 2000, 4, 8, [], "png"),
    ("encode webp", "jpeg", 3000, 2000, 3, 8, [], "webp"),
    ("encode webp rgba", "png", 3000, 2000, 4, 8, [], "webp"),
    ("encode avif", "jpeg", 2000, 1500, 3, 8, [], "avif"),
    ("encode avif rgba", "png", 2000, 1500, 4, 8, [], "avif"),
    ("encode gif", "jpeg", 1000, 800, 3, 8, [], "gif"),
    ("encode tiff", "jpeg", 3000, 2000, 3, 8, [], "tiff"),
    (
        "resize jpeg shrink-on-load",
        "jpeg",
        4000,
        3000,
        3,
        8,
        [[{"resize": {"width": 800}}]],
        "jpeg",
    ),
    ("resize png", "png", 3000, 2000, 3, 8, [[{"resize": {"width": 800}}]], "jpeg"),
    ("resize png rgba16", "png", 3000, 2000, 4, 16, [[{"resize": {"width": 800}}]], "png"),
    (
        "resize enlarge",
        "jpeg",
        500,
        400,
        3,
        8,
        [[{"resize": {**FORCE, "width": 5000, "height": 4000}}]],
        "jpeg",
    ),
    (
        "resize enlarge rgba + rotate",
        "png",
        60,
        40,
        4,
        8,
        [[{"resize": {**FORCE, "width": 6000, "height": 4000}}, {"rotate": {"angle": 90}}]],
        "png",
    ),
    ("blur 5", "jpeg", 3000, 2000, 3, 8, [[{"blur": {"sigma": 5}}]], "jpeg"),
    ("blur 50", "jpeg", 3000, 2000, 3, 8, [[{"blur": {"sigma": 50}}]], "jpeg"),
    ("blur 100 rgba", "png", 2000, 1500, 4, 8, [[{"blur": {"sigma": 100}}]], "png"),
    ("4 x blur 20", "jpeg", 2000, 1500, 3, 8, [[{"blur": {"sigma": 20}}] * 4], "jpeg"),
    ("8 x blur 100", "jpeg", 1920, 1200, 3, 8, [[{"blur": {"sigma": 100}}] * 8], "jpeg"),
    ("sharpen 2", "jpeg", 3000, 2000, 3, 8, [[{"sharpen": {"sigma": 2}}]], "jpeg"),
    ("pixelate 16", "jpeg", 3000, 2000, 3, 8, [[{"pixelate": {"size": 16}}]], "jpeg"),
    ("pixelate 512", "jpeg", 3000, 2000, 3, 8, [[{"pixelate": {"size": 512}}]], "jpeg"),
    ("rotate 90", "jpeg", 4000, 3000, 3, 8, [[{"rotate": {"angle": 90}}]], "jpeg"),
    ("flip vertical", "jpeg", 4000, 3000, 3, 8, [[{"flip": {"vertical": True}}]], "jpeg"),
    (
        "crop smart",
        "jpeg",
        3000,
        2000,
        3,
        8,
        [[{"crop": {"width": 0.5, "height": 0.5, "gravity": {"smart": {}}}}]],
        "jpeg",
    ),
    (
        "resize fill smart",
        "jpeg",
        3000,
        2000,
        3,
        8,
        [
            [
                {
                    "resize": {
                        "type": "RESIZING_TYPE_FILL",
                        "width": 800,
                        "height": 800,
                        "gravity": {"smart": {}},
                    }
                }
            ]
        ],
        "jpeg",
    ),
    (
        "mixed chain",
        "png",
        2000,
        1500,
        4,
        8,
        [
            [{"rotate": {"angle": 90}}, {"blur": {"sigma": 10}}, {"sharpen": {"sigma": 1}}],
            [{"flip": {"vertical": True}}, {"pixelate": {"size": 8}}, {"background": {}}],
        ],
        "webp",
    ),
]


def source_bytes(
    kind: str, width: int, height: int, bands: int, bits: int, content: str = "photo"
) -> bytes:
    """A source: photo-like (scikit-image's astronaut resampled to the size, with noise), or
    ``flat`` (one colour: the smallest file for its size, as an attacker would send)."""
    import numpy as np
    import pyvips
    from skimage import data

    if content == "flat":
        image = (pyvips.Image.black(width, height, bands=3) + [90, 120, 150]).cast("uchar")
    else:
        photo = pyvips.Image.new_from_array(
            np.ascontiguousarray(data.astronaut()), interpretation="srgb"
        )
        image = photo.resize(width / photo.width, vscale=height / photo.height)
        noise = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0)
        image = (image + noise).cast("uchar")
    if bands == 4:
        ramp = pyvips.Image.xyz(width, height)[0] * (255 / max(1, width - 1))
        image = image.bandjoin(ramp.cast("uchar"))
    if bits == 16:
        image = (image.cast("ushort") * 257).copy(interpretation="rgb16")
    fmt = kind.split("-")[0]
    if kind == "jpeg-progressive":
        return image.jpegsave_buffer(Q=90, interlace=True)
    compression = 9 if content == "flat" else 1
    if kind == "png-interlaced":
        return image.pngsave_buffer(interlace=True, compression=compression)
    if fmt == "jpeg":
        return image.jpegsave_buffer(Q=90)
    if fmt == "png":
        return image.pngsave_buffer(compression=compression)
    if fmt == "webp":
        return image.webpsave_buffer(Q=85)
    if fmt == "avif":
        return image.heifsave_buffer(Q=60, compression="av1", effort=0)
    if fmt == "gif":
        return image.gifsave_buffer()
    return image.tiffsave_buffer(compression="deflate")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def run_one(index: int) -> dict:
    """Run case ``index`` with a budget that refuses nothing; returns the measurement."""
    name, kind, width, height, bands, bits, pipelines, out = CASES[index]
    spec = {
        "name": name,
        "source": [kind, width, height, bands, bits],
        "pipelines": pipelines,
        "format": out,
        "settings": {
            "max_request_work_s": 1e6,
            "max_request_memory_mb": 10**6,
            "max_result_mp": 1000,
        },
    }
    return run_spec(spec)


def run_spec(spec: dict) -> dict:
    """Run one request in this (fresh) process: ``spec`` has ``source`` (the arguments of
    source_bytes), ``pipelines`` (proto-JSON operations), ``format`` and ``settings``
    (overrides; the default budget otherwise). A request the budget refuses is reported with
    its reason and the plan's figures, not run."""
    import gc

    from google.protobuf import json_format

    from imagesvc import memory, planning, vips
    from imagesvc.engine import (
        Engine,
        open_header,
        output_format,
        plan_shrink_on_load,
        source_info,
    )
    from imagesvc.errors import ImageSvcError
    from imagesvc.options import parse_process_request
    from imagesvc.settings import Settings
    from imagesvc.telemetry.metrics import NullMetrics
    from imagesvc.v1 import image_service_pb2 as pb

    memory.tune_malloc()
    settings = Settings(workers=1, **spec.get("settings", {}))
    vips.configure(settings)
    data = source_bytes(*spec["source"])
    msg = pb.ProcessImageRequest(source=pb.ImageSource(data=data))
    for ops in spec["pipelines"]:
        msg.pipelines.append(json_format.ParseDict({"operations": ops}, pb.Pipeline()))
    msg.output.format = getattr(pb, f"IMAGE_FORMAT_{spec['format'].upper()}")
    request = parse_process_request(msg, settings, frozenset())
    header = open_header(request.data, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    plan = planning.plan_request(
        source_info(header, shrink, len(data), settings),
        request.pipelines,
        output_format(request.output, header.format),
        settings,
    )
    del header
    row = {
        "name": spec.get("name", ""),
        "source_bytes": len(data),
        "estimated_s": plan.work_s,
        "estimated_mb": (plan.peak_bytes - len(data)) / 2**20,
        "limit_mb": settings.request_memory_mb,
    }
    engine = Engine(settings, None, NullMetrics())
    gc.collect()
    memory.trim()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    before = _status("VmRSS:")
    cpu = time.process_time()
    try:
        result = asyncio.run(engine.process(request, time.monotonic() + 600))
    except ImageSvcError as error:
        row["result"] = error.reason
    else:
        row["result"] = f"{result.width}x{result.height} {result.format}"
    row["cpu_s"] = time.process_time() - cpu
    row["peak_mb"] = (_status("VmHWM:") - before) / 2**20
    engine.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's case
    parser.add_argument("--spec", help="run one request given as JSON (see run_spec); print JSON")
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one)))
        return 0
    if args.spec is not None:
        print(json.dumps(run_spec(json.loads(args.spec))))
        return 0
    rows = []
    header = f"{'case':32} {'result':22} {'cpu s':>7} {'est s':>7} {'ratio':>6}"
    header += f" {'peak MB':>8} {'est MB':>8} {'ratio':>6}"
    print(header)
    for index, case in enumerate(CASES):
        if args.only and args.only not in case[0]:
            continue
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(index)],
            capture_output=True,
            text=True,
            env=dict(os.environ, IMAGESVC_LOG_LEVEL="warning"),
        )
        if child.returncode:
            print(f"{case[0]:32} failed: {child.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['name']:32} {row['result']:22} {row['cpu_s']:7.2f} {row['estimated_s']:7.2f}"
            f" {row['estimated_s'] / max(row['cpu_s'], 1e-3):6.2f} {row['peak_mb']:8.0f}"
            f" {row['estimated_mb']:8.0f} {row['estimated_mb'] / max(row['peak_mb'], 1):6.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
