"""A client from another language: Node.js (@grpc/grpc-js, loading the .proto at run time)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import pyvips
from google import rpc

from tests.server import scenes

pytestmark = [pytest.mark.triton]
REPO = Path(__file__).resolve().parents[2]


async def test_node_client_processes_and_reads_rich_errors(service, channel, tmp_path):
    node = shutil.which("node")
    assert node, "node is missing"
    assert (REPO / "clients/node/node_modules/@grpc/grpc-js").is_dir(), "run make install"
    source = tmp_path / "astronaut.jpg"
    source.write_bytes(scenes.astronaut().jpegsave_buffer())
    out = tmp_path / "out.webp"
    # googleapis-common-protos ships the google/rpc .proto files next to its modules.
    google_protos = Path(rpc.__path__[0]).parents[1]
    done = await asyncio.to_thread(
        subprocess.run,
        [
            node,
            "clients/node/process.mjs",
            f"127.0.0.1:{service.port}",
            str(source),
            str(out),
            str(google_protos),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ok, junk = (json.loads(line) for line in done.stdout.splitlines())
    assert ok == {
        "call": "ok",
        "format": "IMAGE_FORMAT_WEBP",
        "width": 100,
        "height": 100,
        "detections": 0,
    }
    result = pyvips.Image.new_from_file(str(out))
    assert (result.width, result.height) == (100, 100)
    assert result.get("vips-loader").startswith("webpload")
    assert junk == {
        "call": "junk",
        "code": "INVALID_ARGUMENT",
        "reason": "IMAGE_FORMAT_UNRECOGNIZED",
        "domain": "imagesvc.v1",
    }
