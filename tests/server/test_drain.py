"""The server process's start and stop, end to end: ``python -m imagesvc.server`` in a subprocess
on an ephemeral loopback port, called by real gRPC clients.

- SIGTERM drains: health turns NOT_SERVING at once, new RPCs are still served for
  IMAGESVC_DRAIN_S, then the server stops with IMAGESVC_GRACE_PERIOD_S (in-flight RPCs finish,
  new ones get UNAVAILABLE) and the process exits. Requests arrive throughout.
- A second signal ends the drain, a third cancels the in-flight RPCs.
- A taken gRPC or metrics port fails the start with one log line and exit status 1.

No Triton: IMAGESVC_TRITON_URL points at a closed port (detection would degrade; these requests
use none), so ``imagesvc.v1.ImageService`` stays NOT_SERVING and the process-wide ``""`` service
is the one that shows the SERVING -> NOT_SERVING turn.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests import images
from tests.server_process import REPO, port_open

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def small_request() -> pb.ProcessImageRequest:
    return images.request(
        images.jpeg(images.coords(64, 48)),
        [pb.Operation(resize=pb.Resize(type=pb.RESIZING_TYPE_FIT, width=32, height=32))],
        format=pb.IMAGE_FORMAT_PNG,
    )


def slow_request() -> pb.ProcessImageRequest:
    """About a second of libvips work: a 1024 px picture enlarged to 6 MP, blurred, encoded
    to PNG."""
    enlarge = pb.Operation(
        resize=pb.Resize(type=pb.RESIZING_TYPE_FORCE, width=2500, height=2500, enlarge=True)
    )
    blur = pb.Operation(blur=pb.Blur(sigma=40))
    return images.request(
        images.jpeg(images.textured(1024, 1024)), [enlarge, blur], format=pb.IMAGE_FORMAT_PNG
    )


@dataclass
class Call:
    sent: float
    done: float = 0.0
    code: grpc.StatusCode | None = None


@dataclass
class Load:
    """Open-loop client: one new ProcessImage every ``interval`` s, whatever the replies do."""

    stub: pb_grpc.ImageServiceStub
    interval: float = 0.03
    calls: list[Call] = field(default_factory=list)

    async def _one(self, request: pb.ProcessImageRequest) -> Call:
        call = Call(time.monotonic())
        self.calls.append(call)
        try:
            await self.stub.ProcessImage(request, timeout=30)
            call.code = OK
        except grpc.aio.AioRpcError as error:
            call.code = error.code()
        call.done = time.monotonic()
        return call

    async def run(self, stop: asyncio.Event) -> None:
        request = small_request()
        tasks = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(self._one(request)))
            await asyncio.sleep(self.interval)
        await asyncio.gather(*tasks)


async def check(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def wait_for_exit(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, proc.wait, timeout)
    return code, time.monotonic()


DRAIN_S = 2.0
GRACE_S = 8.0


async def test_sigterm_drains_then_stops_without_losing_requests(start_server):
    server, port = start_server(
        IMAGESVC_DRAIN_S=str(DRAIN_S),
        IMAGESVC_GRACE_PERIOD_S=str(GRACE_S),
        IMAGESVC_HEALTH_POLL_S="0.2",
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as health_channel,
    ):
        health = health_pb2_grpc.HealthStub(health_channel)
        assert await check(health) == SERVING
        # A Watch left open, as gRPC client-side health checking keeps one.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        watched: list[tuple[float, int]] = []

        async def follow() -> None:
            async for response in watch:
                watched.append((time.monotonic(), response.status))

        follower = asyncio.create_task(follow())
        load, stop_load = Load(pb_grpc.ImageServiceStub(channel)), asyncio.Event()
        load_task = asyncio.create_task(load.run(stop_load))
        await asyncio.sleep(0.5)
        assert [s for _, s in watched] == [SERVING]
        assert any(c.code == OK for c in load.calls), "no request succeeded before SIGTERM"

        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        checks: list[tuple[float, int]] = []
        while time.monotonic() < sigterm + 1:
            status = await check(health)
            checks.append((time.monotonic(), status))
            if status == NOT_SERVING:
                break
        not_serving_after = checks[-1][0] - sigterm
        assert checks[-1][1] == NOT_SERVING, "health did not turn NOT_SERVING"
        # Every service, the readiness one included.
        for service in ("imagesvc.v1.ImageService", "imagesvc.v1.Inference"):
            assert await check(health, service) == NOT_SERVING

        # Slow requests sent just before the drain ends are still running when the server stops.
        await asyncio.sleep(max(0.0, sigterm + DRAIN_S - 0.4 - time.monotonic()))
        assert await check(health) == NOT_SERVING, "health must answer during the whole drain"
        slow = [asyncio.create_task(load._one(slow_request())) for _ in range(4)]

        code, exited = await wait_for_exit(server.proc, DRAIN_S + GRACE_S + 10)
        await asyncio.sleep(0.3)  # requests keep arriving after the exit
        stop_load.set()
        await load_task
        slow_calls = await asyncio.gather(*slow)
        await asyncio.wait_for(follower, 5)
        watch_code = await watch.code()
    output = server.output()

    # Health: NOT_SERVING at once (the README's promise is now observable): seen by Check and by
    # the Watch within the first half of the drain (typically a few ms; the bound is an
    # ordering, loose enough for a loaded machine), and the Watch was ended when the server
    # stopped rather than holding the stop.
    print(f"SIGTERM -> NOT_SERVING observed by Check after {not_serving_after * 1000:.1f} ms")
    assert not_serving_after < DRAIN_S / 2
    assert [s for _, s in watched] == [SERVING, NOT_SERVING]
    print(f"SIGTERM -> NOT_SERVING on the Watch after {(watched[1][0] - sigterm) * 1000:.1f} ms")
    assert watched[1][0] - sigterm < DRAIN_S / 2
    assert watch_code == OK

    # Requests sent during the drain all succeed, and there were plenty of them.
    calls = load.calls
    during_drain = [c for c in calls if sigterm <= c.sent < sigterm + DRAIN_S - 0.2]
    assert len(during_drain) >= 20
    assert all(c.code == OK for c in during_drain)
    assert all(c.code == OK for c in calls if c.sent < sigterm + DRAIN_S - 0.2)
    # The stop came at the end of the drain, not before: the first refused request.
    refused = [c for c in calls if c.code == UNAVAILABLE]
    assert refused, "no request was refused after the stop"
    first_refused = min(c.sent for c in refused)
    # Every answer is OK or UNAVAILABLE, except that a call racing the stop itself (sent as it
    # began: gRPC had taken it in as its shutdown started) may come back CANCELLED.
    odd = [(round(c.sent - sigterm, 3), c.code) for c in calls if c.code not in (OK, UNAVAILABLE)]
    assert all(
        code == grpc.StatusCode.CANCELLED and sent >= first_refused - sigterm - 0.1
        for sent, code in odd
    ), (odd, round(first_refused - sigterm, 3))
    print(f"SIGTERM -> first refused request after {first_refused - sigterm:.2f} s")
    assert first_refused >= sigterm + DRAIN_S - 0.2
    # After the stop began, nothing new is served, and after the exit the port is closed.
    assert all(c.code == UNAVAILABLE for c in calls if c.sent > first_refused + 0.5)
    after_exit = [c for c in calls if c.sent > exited]
    assert after_exit and all(c.code == UNAVAILABLE for c in after_exit)
    assert not port_open(port)

    # In-flight requests finished OK within the grace period, at least one after the stop began.
    assert all(c.code == OK for c in slow_calls), [c.code for c in slow_calls]
    assert max(c.done for c in slow_calls) > first_refused
    inflight_done = max(c.done for c in calls if c.code == OK)

    # The process exits once the in-flight work is done, well within drain + grace. A call that
    # raced the stop (CANCELLED above) can be held by gRPC until the grace runs out, unserved:
    # gRPC's race, not the server's, so then only drain + grace bounds the exit.
    assert code == 0, output
    print(
        f"exit {exited - sigterm:.2f} s after SIGTERM, {exited - inflight_done:.2f} s after the last reply"
    )
    assert exited - sigterm < DRAIN_S + GRACE_S + 1
    if not odd:
        assert exited - inflight_done < GRACE_S / 2
    events = [e["event"] for _, e in server.events]
    assert events.index("draining") < events.index("stopping") < events.index("stopped")


async def test_further_signals_cut_the_drain_then_the_grace_short(start_server):
    server, port = start_server(IMAGESVC_DRAIN_S="60", IMAGESVC_GRACE_PERIOD_S="60")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.ImageServiceStub(channel)
        load = Load(stub)
        assert await check(health) == SERVING
        server.proc.send_signal(signal.SIGTERM)
        server.wait_event("draining", timeout=10)
        # Draining: still served.
        assert (await load._one(small_request())).code == OK
        # Work queued for seconds: two workers, many slow requests.
        slow = [asyncio.create_task(load._one(slow_request())) for _ in range(12)]
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGINT)  # second: end the drain, stop with the grace
        server.wait_event("stopping", timeout=10)
        assert server.event("drain_cut_short")
        assert server.proc.poll() is None, "the grace period must still let in-flight work run"
        server.proc.send_signal(signal.SIGTERM)  # third: cancel the in-flight RPCs
        code, _ = await wait_for_exit(server.proc, 20)
        calls = await asyncio.gather(*slow)
    assert code == 0, server.output()
    assert server.event("grace_cut_short")
    assert any(c.code != OK for c in calls), "the third signal cancelled nothing"


@pytest.mark.parametrize("which", ["IMAGESVC_PORT", "IMAGESVC_METRICS_PORT"])
def test_a_taken_port_fails_the_start_with_one_line(which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "IMAGESVC_PORT": "0",
            "IMAGESVC_METRICS_PORT": "0",
            which: str(taken.getsockname()[1]),
        }
        done = subprocess.run(
            [sys.executable, "-m", "imagesvc.server"],
            cwd=REPO,
            env=dict(os.environ, IMAGESVC_TRITON_URL="127.0.0.1:1", **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    failures = [line for line in done.stdout.splitlines() if "start_failed" in line]
    assert len(failures) == 1, output
    assert which in failures[0] and "Address already in use" in failures[0]
    assert "started" not in output
