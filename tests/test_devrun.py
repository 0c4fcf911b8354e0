"""`make run`'s runner: sidecar + service come up, the printed command works, SIGTERM stops both."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pyvips

pytestmark = [pytest.mark.triton]
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_devrun_starts_both_prints_a_working_command_and_stops_cleanly(tmp_path):
    ports = {name: free_port() for name in ("svc", "metrics", "grpc", "http", "tmetrics")}
    env = dict(
        os.environ,
        IMAGESVC_PORT=str(ports["svc"]),
        IMAGESVC_METRICS_PORT=str(ports["metrics"]),
        IMAGESVC_DEVRUN_TRITON_GRPC_PORT=str(ports["grpc"]),
        IMAGESVC_DEVRUN_TRITON_HTTP_PORT=str(ports["http"]),
        IMAGESVC_DEVRUN_TRITON_METRICS_PORT=str(ports["tmetrics"]),
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "imagesvc.devrun"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in runner.stdout], daemon=True
    ).start()
    seen: list[str] = []
    try:
        command = None
        deadline = time.monotonic() + 240
        while command is None and time.monotonic() < deadline and runner.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if "imagesvc.cli" in line and "process" in line:
                command = line.strip()
        assert command, "devrun never printed the command to try"
        out = tmp_path / "face.webp"
        args = shlex.split(command)
        args[args.index("-o") + 1] = str(out)  # keep the test's output out of /tmp
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = pyvips.Image.new_from_file(str(out))
        assert (result.width, result.height) == (256, 256)
        assert port_open(ports["svc"]) and port_open(ports["http"])
    finally:
        runner.send_signal(signal.SIGTERM)
        code = runner.wait(timeout=90)
    assert code == 0
    # The service applied its malloc policy (imagesvc.memory) at start.
    assert any("malloc_tuned" in line for line in seen)
    assert not port_open(ports["svc"]), "the service outlived devrun"
    assert not port_open(ports["http"]), "Triton outlived devrun"
