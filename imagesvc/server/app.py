"""Server bootstrap: settings, libvips, metrics, Triton client, engine, gRPC server with health
and reflection, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal
from dataclasses import dataclass

import grpc
import pyvips
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from imagesvc import logging as imagesvc_logging
from imagesvc import memory, vips
from imagesvc.engine import Engine
from imagesvc.server.health import HealthReporter
from imagesvc.server.interceptors import ServerInterceptor
from imagesvc.server.servicer import ImageServiceServicer
from imagesvc.settings import Settings
from imagesvc.telemetry.dogstatsd import DogStatsdMetrics
from imagesvc.telemetry.metrics import FanOutMetrics, Metrics, PrometheusMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference.client import FaceDetector

VERSION = "0.1.0"
log = structlog.get_logger("imagesvc")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    engine: Engine
    health: HealthReporter
    detector: FaceDetector
    metrics_port: int | None
    metrics_server: object | None
    trimmer: memory.MemoryTrimmer

    async def stop(self, grace: float) -> None:
        await self.health.stop()
        await self.server.stop(grace)
        await self.trimmer.stop()
        await self.detector.close()
        self.engine.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def build_metrics(settings: Settings, registry: CollectorRegistry | None) -> Metrics:
    info = {
        "version": VERSION,
        "libvips_version": ".".join(str(pyvips.version(i)) for i in range(3)),
    }
    prometheus = PrometheusMetrics(registry, workers=settings.workers, info=info)
    if settings.dogstatsd_enabled:
        return FanOutMetrics(prometheus, DogStatsdMetrics(settings.dogstatsd_namespace))
    return prometheus


async def start(settings: Settings, registry: CollectorRegistry | None = None) -> RunningServer:
    """Start everything; the caller owns the loop. ``registry`` isolates metrics in tests."""
    vips.configure(settings)
    metrics = build_metrics(settings, registry)
    metrics_server = None
    metrics_port = None
    if settings.metrics_port or registry is not None:
        kw = {"registry": registry} if registry is not None else {}
        metrics_server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, **kw
        )
        metrics_port = metrics_server.server_port
    detector = FaceDetector(
        settings.triton_url,
        timeout_s=settings.triton_timeout_s,
        score_threshold=settings.detection_score_threshold,
        nms_threshold=settings.detection_nms_threshold,
        on_inference=metrics.inference,
        retry_after_s=settings.triton_retry_after_s,
    )
    engine = Engine(settings, detector, metrics)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(interceptors=[ServerInterceptor(metrics)], options=options)
    ImageServiceServicer(engine, settings).register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        pb.DESCRIPTOR.services_by_name["ImageService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    reporter = HealthReporter(health_servicer, detector.ready, metrics, settings.health_poll_s)
    await server.start()
    await reporter.start()
    trimmer = memory.MemoryTrimmer(settings.free_memory_interval_s)
    trimmer.start()
    log.info(
        "started",
        grpc=f"{settings.host}:{port}",
        metrics=f"{settings.metrics_host}:{metrics_port}" if metrics_port else None,
        triton=settings.triton_url,
        workers=settings.workers,
    )
    return RunningServer(
        server, port, engine, reporter, detector, metrics_port, metrics_server, trimmer
    )


async def serve(settings: Settings) -> None:
    running = await start(settings)
    # Everything alive now (modules, descriptors, settings) lives as long as the process: move it
    # out of the collector's reach, so full collections walk only what requests create.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", grace_s=settings.grace_period_s)
    await running.stop(settings.grace_period_s)
    log.info("stopped")


def main() -> None:
    settings = Settings()
    imagesvc_logging.configure(settings.log_level, settings.log_format)
    # A process-wide choice, so it is made here (before any thread starts), not in start().
    if settings.malloc_tuning and memory.tune_malloc():
        log.info(
            "malloc_tuned",
            mmap_threshold=memory.MMAP_THRESHOLD_BYTES,
            trim_threshold=memory.TRIM_THRESHOLD_BYTES,
        )
    asyncio.run(serve(settings))
