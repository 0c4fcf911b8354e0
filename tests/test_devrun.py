"""`make run`'s runner: sidecar + service come up, the printed command works, a killed Triton is
restarted while the service keeps serving, SIGTERM stops both."""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import pyvips
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesvc import devrun
from tests.server_process import free_port, port_open

REPO = Path(__file__).resolve().parents[1]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def tritonserver_pids(grpc_port: int) -> list[int]:
    """Processes running the tritonserver binary with this --grpc-port."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args[0].endswith("/bin/tritonserver") and f"--grpc-port={grpc_port}" in args:
            pids.append(int(entry.name))
    return pids


def make_dry_run(target: str) -> str:
    """The commands `make TARGET` would run on a clean clone (-B: every target out of date)."""
    if shutil.which("make") is None:
        pytest.skip("make is not on PATH")
    done = subprocess.run(
        ["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_only_what_running_needs():
    run = make_dry_run("run")
    for needed in (
        "libpython3.11",
        "pip install -q -e '.[codegen]'",
        "nvidia-pytriton",
        "triton-python-requirements.txt",
        "grpc_tools.protoc",
        "imagesvc.devrun",
    ):
        assert needed in run, needed
    for test_only in ("[dev]", "prometheus", "npm ci", "pytest", "ruff"):
        assert test_only not in run, test_only
    # `make test` (CI, clean clone) still installs everything, then lints and tests.
    test = make_dry_run("test")
    for needed in (
        "libpython3.11",
        "nvidia-pytriton",
        "grpc_tools.protoc",
        "'.[dev]'",
        "prometheus",
        "npm ci",
        "buf",
        "ruff check",
        "pytest",
    ):
        assert needed in test, needed


def test_restart_backoff_doubles_up_to_its_cap_and_resets():
    backoff = devrun.Backoff(first=1, cap=30)
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next() == 1


@pytest.mark.triton
def test_devrun_starts_both_prints_a_working_command_restarts_triton_and_stops(
    tmp_path,
):
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
        assert "degraded" not in done.stdout
        result = pyvips.Image.new_from_file(str(out))
        assert (result.width, result.height) == (256, 256)
        assert port_open(ports["svc"]) and port_open(ports["http"])

        # Triton dies: the runner restarts it, and the service keeps serving all along.
        [triton] = tritonserver_pids(ports["grpc"])
        os.kill(triton, signal.SIGKILL)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{ports['svc']}"))
        ready = health_pb2.HealthCheckRequest(service="imagesvc.v1.ImageService")
        inference = health_pb2.HealthCheckRequest(service="imagesvc.v1.Inference")
        statuses, inference_statuses = set(), set()
        restarted = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and runner.poll() is None:
            statuses.add(health.Check(ready, timeout=5).status)
            inference_statuses.add(health.Check(inference, timeout=5).status)
            while not lines.empty():
                seen.append(lines.get())
            restarted = any("restarting the triton sidecar (restart 1)" in x for x in seen)
            new = [pid for pid in tritonserver_pids(ports["grpc"]) if pid != triton]
            if restarted and new and inference_statuses == {SERVING, NOT_SERVING}:
                if health.Check(inference, timeout=5).status == SERVING:
                    break
            time.sleep(0.2)
        assert runner.poll() is None, "devrun stopped when Triton died"
        assert any("triton sidecar exited" in x and "restart 1 in 1s" in x for x in seen), seen
        assert restarted and new, "the sidecar was not restarted"
        assert statuses == {SERVING}, "the service left SERVING while Triton was down"
        # Inference followed Triton down and back up.
        assert inference_statuses == {SERVING, NOT_SERVING}
        assert health.Check(inference, timeout=5).status == SERVING
        # The service uses the new Triton: face detection works again, nothing degraded.
        again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "detection face" in again.stdout and "degraded" not in again.stdout
    finally:
        runner.send_signal(signal.SIGTERM)
        code = runner.wait(timeout=90)
    assert code == 0
    # The service applied its malloc policy (imagesvc.memory) at start.
    assert any("malloc_tuned" in line for line in seen)
    assert not port_open(ports["svc"]), "the service outlived devrun"
    assert not port_open(ports["http"]), "Triton outlived devrun"
