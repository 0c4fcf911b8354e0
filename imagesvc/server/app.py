"""Server bootstrap: settings, libvips, metrics, Triton client, engine, gRPC server with health
and reflection, graceful shutdown on SIGTERM/SIGINT.

Shutdown, on the first SIGTERM or SIGINT:

1. drain: health reports NOT_SERVING for every service at once, while new RPCs are still
   accepted and served for ``IMAGESVC_DRAIN_S``, so that load balancers (a Kubernetes readiness
   probe) take the pod out of rotation before it stops accepting work;
2. stop: the server refuses new RPCs and closes its port; in-flight RPCs get
   ``IMAGESVC_GRACE_PERIOD_S`` to finish, then are cancelled; then the process exits.

Each further signal skips to the next step: a second one ends the drain at once, a third
cancels the in-flight RPCs.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pyvips
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from imagesvc import logging as imagesvc_logging
from imagesvc import fallback, memory, presets, vips
from imagesvc.engine import Engine
from imagesvc.server import auth
from imagesvc.server.health import HealthReporter, HealthServicer
from imagesvc.server.interceptors import ServerInterceptor
from imagesvc.server.servicer import ImageServiceServicer
from imagesvc.settings import Settings
from imagesvc.sources.objects import ObjectFetcher
from imagesvc.sources.url import UrlFetcher
from imagesvc.telemetry.metrics import FanOutMetrics, Metrics, PrometheusMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference.autoquality_client import QualityPredictor
from inference.client import FaceDetector, shipped_models
from inference.segmentation import SELFIE_SEGMENTATION
from inference.segmentation_client import PersonSegmenter
from inference.yolo import model_from_settings as yolo_model_from_settings

VERSION = "0.1.0"
log = structlog.get_logger("imagesvc")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    engine: Engine
    health: HealthReporter
    detector: FaceDetector
    quality_model: QualityPredictor | None
    metrics_port: int | None
    metrics_server: object | None
    trimmer: memory.MemoryTrimmer
    fetcher: UrlFetcher | None = None
    object_fetcher: ObjectFetcher | None = None
    segmenter: PersonSegmenter | None = None

    async def drain(self) -> None:
        """Report NOT_SERVING for every service, for good; RPCs are still served."""
        await self.health.stop()

    async def stop(self, grace: float) -> None:
        await self.health.stop()
        self.health.servicer.end_watches()
        await self.server.stop(grace)
        await self.trimmer.stop()
        if self.fetcher is not None:
            await self.fetcher.close()  # the url sources' connection pool
        if self.object_fetcher is not None:
            await self.object_fetcher.close()  # the object sources' client and its pool
        await self.detector.close()
        if self.quality_model is not None:
            await self.quality_model.close()
        if self.segmenter is not None:
            await self.segmenter.close()
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
        # Imported only here: the datadog package brings requests and urllib3 (~6 MB of RSS).
        from imagesvc.telemetry.dogstatsd import DogStatsdMetrics

        return FanOutMetrics(prometheus, DogStatsdMetrics(settings.dogstatsd_namespace))
    return prometheus


class StartError(RuntimeError):
    """The server cannot start (e.g. a port is taken); the message is one line for the log."""


def _bind_failure(host: str, port: int) -> str:
    """Why gRPC could not bind host:port (gRPC itself only says that it failed)."""
    try:
        with socket.create_server((host.strip("[]"), port)):
            pass
    except OSError as error:
        return _reason(error)
    return "gRPC could not bind it"


def _reason(error: OSError) -> str:
    """The OS's words for the error (socket.create_server adds the address, we have it)."""
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return (error.strerror or str(error)).split(" (while attempting")[0]  # e.g. gaierror


def _read_pem(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise StartError(f"cannot read {setting} {path}: {_reason(error)}") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from IMAGESVC_TLS_*; None for plaintext. The files are checked with the
    ssl module (gRPC itself would only fail the handshakes)."""
    cert, key, ca = settings.tls_cert_path, settings.tls_key_path, settings.tls_client_ca_path
    if not cert and not key:
        if ca:
            raise StartError(
                "IMAGESVC_TLS_CLIENT_CA_PATH needs TLS: set IMAGESVC_TLS_CERT_PATH and "
                "IMAGESVC_TLS_KEY_PATH"
            )
        return None
    if not cert or not key:
        missing = "IMAGESVC_TLS_KEY_PATH" if cert else "IMAGESVC_TLS_CERT_PATH"
        raise StartError(
            f"TLS needs both IMAGESVC_TLS_CERT_PATH and IMAGESVC_TLS_KEY_PATH: set {missing}"
        )
    cert_pem = _read_pem(cert, "IMAGESVC_TLS_CERT_PATH")
    key_pem = _read_pem(key, "IMAGESVC_TLS_KEY_PATH")
    ca_pem = _read_pem(ca, "IMAGESVC_TLS_CLIENT_CA_PATH") if ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # b"": an encrypted key fails here instead of prompting for a password.
        context.load_cert_chain(cert, key, password=b"")
    except (ssl.SSLError, OSError, ValueError) as error:
        raise StartError(
            f"IMAGESVC_TLS_CERT_PATH {cert} / IMAGESVC_TLS_KEY_PATH {key}: not a PEM certificate "
            f"chain and its unencrypted private key ({_ssl_reason(error)})"
        ) from None
    if ca_pem is not None:
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
            raise StartError(
                f"IMAGESVC_TLS_CLIENT_CA_PATH {ca}: not PEM CA certificates ({_ssl_reason(error)})"
            ) from None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def _ssl_reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or str(error)
    return " ".join(str(reason).split())


def _bind_grpc(server: grpc.aio.Server, settings: Settings) -> int:
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        reason = _bind_failure(settings.host, settings.port)
        raise StartError(
            f"cannot listen for gRPC on {address} (IMAGESVC_HOST/IMAGESVC_PORT): {reason}"
        ) from None


def _start_metrics_server(settings: Settings, registry: CollectorRegistry | None):
    kw = {"registry": registry} if registry is not None else {}
    try:
        server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_host, **kw)
    except OSError as error:
        reason = _reason(error)
        if error.errno == errno.EADDRINUSE:
            reason += "; set IMAGESVC_METRICS_PORT to a free port, or 0 to disable metrics"
        raise StartError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"(IMAGESVC_METRICS_HOST/IMAGESVC_METRICS_PORT): {reason}"
        ) from None
    return server


async def _abandon(server, metrics_server, detector, quality_model, engine, segmenter=None) -> None:
    """Undo a start that failed after its ports were bound."""
    await server.stop(None)
    if metrics_server is not None:
        metrics_server.shutdown()
    await detector.close()
    if quality_model is not None:
        await quality_model.close()
    if segmenter is not None:
        await segmenter.close()
    engine.close()


async def start(settings: Settings, registry: CollectorRegistry | None = None) -> RunningServer:
    """Start everything; the caller owns the loop. ``registry`` isolates metrics in tests.

    Raises StartError, with a one-line message, when a port cannot be bound."""
    vips.configure(settings)
    try:
        # Before any port is bound; the file wins over the URL.
        fallback_image = fallback.load_image(settings) or await fallback.fetch_image(settings)
    except fallback.FallbackImageError as error:
        raise StartError(str(error)) from None
    try:
        loaded_presets = presets.load(settings)  # their options are checked once the engine is up
    except presets.PresetsError as error:
        raise StartError(str(error)) from None
    metrics = build_metrics(settings, registry)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    try:
        authenticator = auth.interceptor(settings, metrics)  # reads the token file
    except auth.AuthConfigError as error:
        raise StartError(str(error)) from None
    # The auth interceptor inside ServerInterceptor: refusals become statuses there, and are
    # counted in grpc_server_handled_total like every other outcome.
    interceptors = [ServerInterceptor(metrics)]
    if authenticator is not None:
        interceptors.append(authenticator)
    server = grpc.aio.server(interceptors=interceptors, options=options)
    # Ports first, so a taken one fails the start before anything else is running.
    port = _bind_grpc(server, settings)
    metrics_server = None
    metrics_port = None
    if settings.metrics_port or registry is not None:
        try:
            metrics_server = _start_metrics_server(settings, registry)
        except StartError:
            await server.stop(None)  # releases the bound gRPC port
            raise
        metrics_port = metrics_server.server_port
    # The detection models: one list; another model family is one more entry in it.
    models = shipped_models(
        enabled=settings.detection_models,
        face_score_threshold=settings.detection_score_threshold,
        nms_threshold=settings.detection_nms_threshold,
    )
    # A YOLO model the operator brought (IMAGESVC_OBJECT_DETECTION_*); a bad setting fails the
    # start with the setting's name.
    yolo = yolo_model_from_settings(settings)
    if yolo is not None:
        models.append(yolo)
    detector = FaceDetector(
        settings.triton_url,
        timeout_s=settings.triton_timeout_s,
        score_threshold=settings.detection_score_threshold,
        nms_threshold=settings.detection_nms_threshold,
        on_inference=metrics.inference,
        on_abandoned=metrics.triton_call_abandoned,
        models=models,
        retry_after_s=settings.triton_retry_after_s,
    )
    # The ML autoquality model shares the detector's circuit breaker: one sidecar, one verdict.
    quality_model = None
    if settings.autoquality_ml_model:
        quality_model = QualityPredictor(
            settings.triton_url,
            timeout_s=settings.triton_timeout_s,
            breaker=detector.breaker,
            on_inference=metrics.inference,
            on_abandoned=metrics.triton_call_abandoned,
            model_name=settings.autoquality_ml_model,
        )
    # Person segmentation too (IMAGESVC_SEGMENTATION_MODEL; empty: none).
    segmenter = None
    if settings.segmentation_model:
        segmenter = PersonSegmenter(
            settings.triton_url,
            timeout_s=settings.triton_timeout_s,
            breaker=detector.breaker,
            on_inference=metrics.inference,
            on_abandoned=metrics.triton_call_abandoned,
            model=replace(SELFIE_SEGMENTATION, name=settings.segmentation_model),
        )
    engine = Engine(settings, detector, metrics, quality_model, segmenter=segmenter)
    try:
        presets.validate(loaded_presets, settings, engine.known_classes)
    except presets.PresetsError as error:
        await _abandon(server, metrics_server, detector, quality_model, engine, segmenter)
        raise StartError(str(error)) from None
    # One connection pool for url sources, opened on the first fetch.
    fetcher = UrlFetcher(settings, on_fetch=lambda seconds: metrics.step("fetch_source", seconds))
    # One S3 client for object sources, created on the first fetch.
    object_fetcher = ObjectFetcher(
        settings, on_fetch=lambda seconds: metrics.step("fetch_source", seconds)
    )
    ImageServiceServicer(
        engine,
        settings,
        fetcher,
        object_fetcher=object_fetcher,
        metrics=metrics,
        version=VERSION,
        fallback_image=fallback_image,
        presets=loaded_presets,
    ).register(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        pb.DESCRIPTOR.services_by_name["ImageService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
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
        request_memory_mb=settings.request_memory_mb,
    )
    return RunningServer(
        server,
        port,
        engine,
        reporter,
        detector,
        quality_model,
        metrics_port,
        metrics_server,
        trimmer,
        fetcher,
        object_fetcher,
        segmenter,
    )


async def serve(settings: Settings) -> None:
    running = await start(settings)
    # Everything alive now (modules, descriptors, settings) lives as long as the process: move it
    # out of the collector's reach, so full collections walk only what requests create.
    gc.collect()
    gc.freeze()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    received = await signals.get()
    # 1. Drain: out of rotation at once, still serving while load balancers catch up.
    await running.drain()
    log.info("draining", signal=received.name, drain_s=settings.drain_s)
    try:
        received = await asyncio.wait_for(signals.get(), settings.drain_s)
        log.warning("drain_cut_short", signal=received.name)
    except TimeoutError:
        pass
    # 2. Stop: refuse new RPCs, give the in-flight ones the grace period.
    log.info("stopping", grace_s=settings.grace_period_s)
    stopping = asyncio.create_task(running.stop(settings.grace_period_s))
    another = asyncio.create_task(signals.get())
    await asyncio.wait({stopping, another}, return_when=asyncio.FIRST_COMPLETED)
    if another.done():
        log.warning("grace_cut_short", signal=another.result().name)
        await running.server.stop(None)  # the smaller grace wins: cancel in-flight RPCs now
    else:
        another.cancel()
    await stopping
    log.info("stopped")


def main() -> None:
    settings = Settings()
    imagesvc_logging.configure(settings.log_level, settings.log_format)
    # A process-wide choice, so it is made here (before the gRPC, libvips and worker threads
    # start: a thread keeps the malloc arena it was given), not in start().
    applied = memory.apply_policy(settings.malloc_arena_max, settings.malloc_tuning)
    if applied:
        log.info("malloc_tuned", **applied)
    try:
        asyncio.run(serve(settings))
    except StartError as error:
        log.error("start_failed", error=str(error))
        sys.exit(1)
