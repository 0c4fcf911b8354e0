"""``make run``: start the Triton sidecar and the service on loopback, print a command to try,
and stop both cleanly on Ctrl-C or SIGTERM.

Once the service is SERVING, the runner supervises the sidecar: if it exits (Triton crashed or
was killed), the service keeps running (detection degrades meanwhile, see the README's
Degradations) and the sidecar is started again after a backoff that doubles from
RESTART_BACKOFF_FIRST_S up to RESTART_BACKOFF_MAX_S, and starts over once a sidecar has stayed
up for RESTART_BACKOFF_RESET_AFTER_S. Each restart is logged. A sidecar that exits before the
service is first SERVING (a broken install) fails the run instead, as does the service exiting.
"""

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
RESTART_BACKOFF_FIRST_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_BACKOFF_RESET_AFTER_S = 60.0


class Backoff:
    """Delays before successive restarts: first, 2 x first, 4 x first, ... capped at ``cap``."""

    def __init__(self, first: float = RESTART_BACKOFF_FIRST_S, cap: float = RESTART_BACKOFF_MAX_S):
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def _start_sidecar() -> subprocess.Popen:
    return subprocess.Popen(
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


def _stop_timeout_s(env: dict[str, str]) -> float:
    """How long the service may take to stop: its drain + grace period, plus a margin."""
    try:
        drain = float(env.get("IMAGESVC_DRAIN_S", "5"))
        grace = float(env.get("IMAGESVC_GRACE_PERIOD_S", "10"))
    except ValueError:
        return 30.0
    return drain + grace + 15


def _wait_serving(proc: subprocess.Popen, sidecar: subprocess.Popen, deadline: float) -> bool:
    channel = grpc.insecure_channel(SERVICE)
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="imagesvc.v1.ImageService")
    while time.monotonic() < deadline and proc.poll() is None and sidecar.poll() is None:
        try:
            if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen | None, name: str, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    print(f"stopping {name} ...", flush=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
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
    env = dict(os.environ, IMAGESVC_TRITON_URL=f"127.0.0.1:{TRITON_GRPC_PORT}")
    env.setdefault("IMAGESVC_HEALTH_POLL_S", "1")
    # Nothing routes by this service's readiness on loopback: stop without the drain.
    env.setdefault("IMAGESVC_DRAIN_S", "0")
    try:
        sidecar = _start_sidecar()
        service = subprocess.Popen(
            [sys.executable, "-m", "imagesvc.server"], env=env, start_new_session=True
        )
        if not _wait_serving(service, sidecar, time.monotonic() + START_TIMEOUT_S):
            if sidecar.poll() is not None:
                print(
                    f"the Triton sidecar exited with status {sidecar.returncode} before the "
                    "service was SERVING; see the logs above",
                    file=sys.stderr,
                )
            else:
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
        backoff, restarts = Backoff(), 0
        sidecar_started = time.monotonic()
        restart_at = 0.0
        while not stopping and service.poll() is None:
            now = time.monotonic()
            if sidecar is not None and sidecar.poll() is not None:
                if now - sidecar_started >= RESTART_BACKOFF_RESET_AFTER_S:
                    backoff.reset()
                delay = backoff.next()
                restarts += 1
                print(
                    f"triton sidecar exited with status {sidecar.returncode}; restart {restarts} "
                    f"in {delay:g}s (imagesvc keeps serving, detection degraded meanwhile)",
                    file=sys.stderr,
                    flush=True,
                )
                sidecar, restart_at = None, now + delay
            if sidecar is None and now >= restart_at:
                print(f"restarting the triton sidecar (restart {restarts})", flush=True)
                sidecar, sidecar_started = _start_sidecar(), now
            time.sleep(0.2)
        if stopping:
            return 0
        print(f"imagesvc exited with status {service.returncode}", file=sys.stderr)
        return 1
    finally:
        _stop(service, "imagesvc", _stop_timeout_s(env))
        _stop(sidecar, "triton sidecar")


if __name__ == "__main__":
    sys.exit(main())
