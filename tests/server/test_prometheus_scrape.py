"""A real Prometheus server (Debian's package, installed by the Makefile) scrapes /metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest

from imagesvc.v1 import image_service_pb2 as pb
from tests.server import scenes

pytestmark = [pytest.mark.triton]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


async def poll(port: int, promql: str, timeout: float = 45.0) -> list:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = await asyncio.to_thread(query, port, promql)
            if result:
                return result
        except OSError:
            pass  # Prometheus still starting
        if loop.time() > deadline:
            raise AssertionError(f"Prometheus returned nothing for {promql}")
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_rpc_step_and_inference_metrics(service, stub, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make install` installs Debian's package"
    await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=scenes.astronaut().jpegsave_buffer()),
            pipelines=[pb.Pipeline(operations=[pb.Operation(draw_detections=pb.DrawDetections())])],
        ),
        timeout=30,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: imagesvc\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{service.metrics_port}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        [up] = await poll(port, 'up{job="imagesvc"} == 1')
        assert up["value"][1] == "1"
        handled = await poll(
            port,
            'grpc_server_handled_total{grpc_method="ProcessImage",grpc_code="OK"}',
        )
        assert float(handled[0]["value"][1]) >= 1
        inference = await poll(port, "imagesvc_inference_request_duration_seconds_count > 0")
        assert {series["metric"]["model"] for series in inference} >= {"blazeface_short_range"}
        p95 = await poll(
            port,
            "histogram_quantile(0.95, sum by (le) "
            '(imagesvc_pipeline_step_duration_seconds_bucket{op="draw_detections"}))',
        )
        assert 0 < float(p95[0]["value"][1]) < 10
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
