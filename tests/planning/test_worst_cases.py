"""The budget holds for the worst requests within the documented limits: each either is refused
before decoding (REQUEST_TOO_COSTLY) or runs within IMAGESVC_MAX_REQUEST_MEMORY_MB, and its
measured peak stays under the planner's estimate. Each request runs in a fresh process
(bench/cost_model.py --spec), so its peak resident memory is its own; memory, not time, is
asserted. The default budget applies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORCE = {"type": "RESIZING_TYPE_FORCE", "enlarge": True}
BLUR_100 = {"blur": {"sigma": 100}}
ROTATE = {"rotate": {"angle": 90}}
TINY_JPEG = ["jpeg", 40, 30, 3, 8, "photo"]  # ~1.5 KB
TINY_ALPHA_PNG = ["png", 8, 8, 4, 8, "photo"]
RGBA16_50MP = ["png", 7071, 7071, 4, 16, "flat"]  # ~1.4 MB of PNG, 400 MB of pixels
PHOTO_1920 = ["jpeg", 1920, 1200, 3, 8, "photo"]

# (name, source, pipelines, output format, expected: "refused" | "runs" | None for either)
WORST_CASES = [
    ("tiny jpeg forced to 16384x16384", TINY_JPEG, [[{"resize": {**FORCE, "width": 16384, "height": 16384}}]], "jpeg", "refused"),
    ("tiny jpeg forced to 50 MP", TINY_JPEG, [[{"resize": {**FORCE, "width": 8192, "height": 6100}}]], "jpeg", "runs"),
    ("tiny jpeg forced to 50 MP, rotated", TINY_JPEG, [[{"resize": {**FORCE, "width": 8192, "height": 6100}}, ROTATE]], "jpeg", "runs"),
    ("tiny alpha png forced to 50 MP, rotated, png", TINY_ALPHA_PNG, [[{"resize": {**FORCE, "width": 8192, "height": 6100}}, ROTATE]], "png", None),
    ("tiny alpha png forced to 50 MP, rotated, webp", TINY_ALPHA_PNG, [[{"resize": {**FORCE, "width": 8000, "height": 6000}}, ROTATE]], "webp", None),
    ("8 blurs sigma 100 on 1920x1200", PHOTO_1920, [[BLUR_100] * 8], "jpeg", "runs"),
    ("32 blurs sigma 100 on 1920x1200", PHOTO_1920, [[BLUR_100] * 32], "jpeg", None),
    ("10 pipelines x 32 blurs sigma 100", PHOTO_1920, [[BLUR_100] * 32] * 10, "jpeg", "refused"),
    ("rgba16 50 MP png resized to 720", RGBA16_50MP, [[{"resize": {"width": 720}}]], "jpeg", "runs"),
    ("rgba16 50 MP png rotated", RGBA16_50MP, [[ROTATE]], "jpeg", None),
    ("rgba16 50 MP png rotated and flipped 32 times", RGBA16_50MP, [[ROTATE, {"flip": {"vertical": True}}] * 16], "png", None),
]  # fmt: skip


def measure(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "bench/cost_model.py", "--spec", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name, source, pipelines, fmt, expected", WORST_CASES, ids=[c[0] for c in WORST_CASES]
)
def test_worst_cases_are_refused_or_stay_within_the_memory_budget(
    name, source, pipelines, fmt, expected
):
    row = measure({"name": name, "source": source, "pipelines": pipelines, "format": fmt})
    print(
        f"{name}: {row['result']}, peak {row['peak_mb']:.0f} MB (estimated {row['estimated_mb']:.0f}),"
        f" {row['cpu_s']:.2f} CPU-s (estimated {row['estimated_s']:.2f})"
    )
    refused = row["result"] == "REQUEST_TOO_COSTLY"
    if expected == "refused":
        assert refused, row
    elif expected == "runs":
        assert not refused, row
    if refused:
        assert row["peak_mb"] < 16, row  # refused from the header: nothing was decoded
        return
    assert "x" in row["result"], row  # ran to a result, no other error
    assert row["peak_mb"] <= row["limit_mb"], row
    assert row["peak_mb"] <= row["estimated_mb"] * 1.1 + 16, row
