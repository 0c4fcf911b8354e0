"""Health reporting on the standard grpc.health.v1 service.

- ``""``: SERVING while the process lives (liveness).
- ``imagesvc.v1.ImageService``: NOT_SERVING until the libvips self-test passes and Triton's
  models are ready, then SERVING. A later Triton outage does not flip it back: requests still
  succeed, degraded, and taking every pod out of rotation would turn an ML outage into a full
  outage. Triton's state is reported instead on ``imagesvc.v1.Inference`` and as the
  ``imagesvc_triton_ready`` metric.

On shutdown every service turns NOT_SERVING at once (``HealthReporter.stop``, the start of the
drain), and when the server stops, open ``Watch`` streams are ended (``HealthServicer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pyvips
import structlog
from grpc_health.v1 import health, health_pb2

from imagesvc.telemetry.metrics import Metrics

SERVICE = "imagesvc.v1.ImageService"
INFERENCE_SERVICE = "imagesvc.v1.Inference"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = structlog.get_logger("imagesvc.health")


class HealthServicer(health.aio.HealthServicer):
    """grpc_health's servicer, whose ``Watch`` streams can be ended.

    A Watch never ends by itself, so one left open (gRPC client-side health checking keeps one
    per connection) would hold a graceful stop for its whole grace period, then be cancelled.
    ``end_watches`` ends them with OK; a Watch that starts after it ends at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[asyncio.Task] = set()
        self._ending = False

    async def Watch(self, request, context) -> None:  # noqa: N802 - the gRPC method name
        if self._ending:
            return
        task = asyncio.current_task()
        self._watches.add(task)
        try:
            await super().Watch(request, context)
        except asyncio.CancelledError:
            if not self._ending:  # the caller cancelled, or gRPC is aborting the call
                raise
        finally:
            self._watches.discard(task)

    def end_watches(self) -> None:
        self._ending = True
        for task in list(self._watches):
            task.cancel()


def vips_self_test() -> None:
    """Encode, decode and resize a tiny image; raises when libvips is broken."""
    image = (pyvips.Image.black(16, 16, bands=3) + 128).copy(interpretation="srgb")
    decoded = pyvips.Image.new_from_buffer(image.jpegsave_buffer(Q=75), "")
    if decoded.resize(0.5).avg() < 1:
        raise RuntimeError("libvips self-test produced a black image")


class HealthReporter:
    def __init__(
        self,
        servicer: HealthServicer,
        triton_ready: Callable[[], Awaitable[bool]] | None,
        metrics: Metrics,
        poll_s: float,
    ) -> None:
        self.servicer = servicer
        self._triton_ready = triton_ready
        self._metrics = metrics
        self._poll_s = poll_s
        self._task: asyncio.Task | None = None
        self.serving = False

    async def start(self) -> None:
        await self.servicer.set(SERVICE, NOT_SERVING)
        await self.servicer.set(INFERENCE_SERVICE, NOT_SERVING)
        await asyncio.get_running_loop().run_in_executor(None, vips_self_test)
        self._task = asyncio.create_task(self._poll(), name="health-poll")

    async def _poll(self) -> None:
        was_ready: bool | None = None
        while True:
            ready = False
            if self._triton_ready is not None:
                try:
                    ready = await self._triton_ready()
                except Exception:  # a readiness probe must never kill the poller
                    log.exception("triton_readiness_failed")
            self._metrics.triton_ready(ready)
            if ready != was_ready:
                log.info("triton_readiness", ready=ready)
                await self.servicer.set(INFERENCE_SERVICE, SERVING if ready else NOT_SERVING)
                was_ready = ready
            if ready and not self.serving:
                self.serving = True
                await self.servicer.set(SERVICE, SERVING)
                log.info("serving")
            await asyncio.sleep(self._poll_s)

    async def stop(self) -> None:
        await self.servicer.enter_graceful_shutdown()
        if self._task is not None:
            self._task.cancel()
