"""``make run``: start the Triton sidecar and the service on loopback, print a command to try,
and stop both cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Ports are the documented defaults; the environment may move them (the tests do).
TRITON_GRPC_PORT = int(os.environ.get("IMAGESVC_DEVRUN_TRITON_GRPC_PORT", "8001"))
TRITON_HTTP_PORT = int(os.environ.get("IMAGESVC_DEVRUN_TRITON_HTTP_PORT", "8000"))
TRITON_METRICS_PORT = int(os.environ.get("IMAGESVC_DEVRUN_TRITON_METRICS_PORT", "8002"))
SERVICE_PORT = int(os.environ.get("IMAGESVC_PORT", "50051"))
METRICS_PORT = int(os.environ.get("IMAGESVC_METRICS_PORT", "9464"))
SERVICE = f"127.0.0.1:{SERVICE_PORT}"
START_TIMEOUT_S = 180


def _wait_serving(proc: subprocess.Popen, deadline: float) -> bool:
    channel = grpc.insecure_channel(SERVICE)
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="imagesvc.v1.ImageService")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    print(f"stopping {name} ...", flush=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sidecar = service = None
    try:
        sidecar = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inference.sidecar",
                "--model-repository",
                "model_repository",
                "--grpc-port",
                str(TRITON_GRPC_PORT),
                "--http-port",
                str(TRITON_HTTP_PORT),
                "--metrics-port",
                str(TRITON_METRICS_PORT),
            ],
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        env = dict(os.environ, IMAGESVC_TRITON_URL=f"127.0.0.1:{TRITON_GRPC_PORT}")
        env.setdefault("IMAGESVC_HEALTH_POLL_S", "1")
        service = subprocess.Popen(
            [sys.executable, "-m", "imagesvc.server"], env=env, start_new_session=True
        )
        if not _wait_serving(service, time.monotonic() + START_TIMEOUT_S):
            print("the service did not become SERVING; see the logs above", file=sys.stderr)
            return 1
        target = "" if SERVICE_PORT == 50051 else f"--target {SERVICE} "
        print(
            f"\nimagesvc is SERVING on {SERVICE} "
            f"(metrics: http://127.0.0.1:{METRICS_PORT}/metrics).\nTry:\n\n"
            f"  .venv/bin/python -m imagesvc.cli {target}process samples/astronaut.jpg "
            "-o /tmp/astronaut-face.webp --pipeline samples/face-crop.json\n\n"
            "Ctrl-C stops the service and the Triton sidecar.",
            flush=True,
        )
        while not stopping and service.poll() is None and sidecar.poll() is None:
            time.sleep(0.5)
        return 0 if stopping else 1
    finally:
        _stop(service, "imagesvc")
        _stop(sidecar, "triton sidecar")


if __name__ == "__main__":
    sys.exit(main())
