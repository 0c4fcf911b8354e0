"""The metrics interface the service records through, and its Prometheus implementation."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from imagesvc.telemetry import names

# Image steps span sub-millisecond flips to multi-second AVIF encodes.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BYTE_BUCKETS = tuple(1024 * 4**i for i in range(10))  # 1 KiB .. 256 MiB
ENCODE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24)
# Around the autoquality targets people use (imgproxy's default 0.02, allowed error 0.001).
# The final quality minus the ML model's prediction (0: the first guess was kept).
PREDICTION_ERROR_BUCKETS = (-20, -10, -5, -3, -2, -1, 0, 1, 2, 3, 5, 10, 20)
DSSIM_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06, 0.1)


class Metrics(Protocol):
    def rpc_started(self, service: str, method: str) -> None: ...
    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None: ...
    def step(self, op: str, seconds: float) -> None: ...
    def inference(self, model: str, seconds: float) -> None: ...
    def error(self, reason: str) -> None: ...
    def degradation(self, reason: str, op: str) -> None: ...
    def images_in_progress(self, delta: int) -> None: ...
    def queue_depth(self, delta: int) -> None: ...
    def image_bytes(self, direction: str, fmt: str, size: int) -> None: ...
    def triton_ready(self, ready: bool) -> None: ...
    def detection_cache(self, hit: bool) -> None: ...
    def small_face_pass(self, outcome: str) -> None: ...
    def triton_call_abandoned(self, model: str) -> None: ...
    def not_modified(self, source: str) -> None: ...
    def processing_skipped(self, fmt: str) -> None: ...
    def fallback_used(self, reason: str) -> None: ...
    def auth_refused(self, reason: str) -> None: ...
    def encoding(self, fmt: str, method: str, encodes: int, dssim: float | None) -> None: ...
    def autoquality_prediction(
        self, fmt: str, model_version: str, predicted: int, final: int
    ) -> None: ...


class PrometheusMetrics:
    """Metrics on a prometheus-client registry (the process default unless one is given)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        workers: int = 0,
        info: dict | None = None,
    ) -> None:
        kw = {"registry": registry} if registry is not None else {}
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(names.GRPC_SERVER_STARTED, "RPCs started.", rpc_labels, **kw)
        self._handled = Counter(
            names.GRPC_SERVER_HANDLED, "RPCs completed.", (*rpc_labels, "grpc_code"), **kw
        )
        self._handling = Histogram(
            names.GRPC_SERVER_HANDLING_SECONDS,
            "RPC handling time.",
            rpc_labels,
            buckets=RPC_BUCKETS,
            **kw,
        )
        self._step = Histogram(
            names.STEP_DURATION, "Time of one pipeline step.", ("op",), buckets=STEP_BUCKETS, **kw
        )
        self._inference = Histogram(
            names.INFERENCE_DURATION,
            "Time of one Triton inference.",
            ("model",),
            buckets=STEP_BUCKETS,
            **kw,
        )
        self._errors = Counter(names.ERRORS, "Failed RPCs by ErrorInfo reason.", ("reason",), **kw)
        self._degradations = Counter(
            names.DEGRADATIONS, "Operations done in a degraded way.", ("reason", "op"), **kw
        )
        self._in_progress = Gauge(names.IMAGES_IN_PROGRESS, "Images being processed.", **kw)
        self._queue = Gauge(names.QUEUE_DEPTH, "Requests waiting for a worker.", **kw)
        self._input_bytes = Histogram(
            names.INPUT_BYTES, "Source sizes.", ("format",), buckets=BYTE_BUCKETS, **kw
        )
        self._output_bytes = Histogram(
            names.OUTPUT_BYTES, "Result sizes.", ("format",), buckets=BYTE_BUCKETS, **kw
        )
        self._triton_ready = Gauge(
            names.TRITON_READY, "1 when Triton and its models are ready.", **kw
        )
        self._detection_cache = Counter(
            names.DETECTION_CACHE_LOOKUPS,
            "Detection cache lookups, by result (hit: Triton was not called).",
            ("result",),
            **kw,
        )
        self._small_face_passes = Counter(
            names.SMALL_FACE_PASSES,
            "Detections on sources large enough for the tiled pass for small faces, by what "
            "became of it: tiled (it ran), not_needed (the first pass or its face hints said "
            "no), skipped_small_output (the output could not show what it finds), unavailable "
            "(Triton failed in the hints or the pass: the first pass's faces were used).",
            ("outcome",),
            **kw,
        )
        self._triton_calls_abandoned = Counter(
            names.TRITON_CALLS_ABANDONED,
            "Triton inference requests the service stopped waiting for (the request's deadline "
            "or the Triton timeout passed), by model; each is left to finish, never cancelled.",
            ("model",),
            **kw,
        )
        self._not_modified = Counter(
            names.NOT_MODIFIED,
            "ProcessImage requests answered not_modified (if_none_match), by source kind.",
            ("source",),
            **kw,
        )
        self._processing_skipped = Counter(
            names.PROCESSING_SKIPPED,
            "ProcessImage sources returned unprocessed (skip_processing), by format.",
            ("format",),
            **kw,
        )
        self._fallback_used = Counter(
            names.FALLBACK_USED,
            "ProcessImage requests answered with the fallback image, by the source's error.",
            ("reason",),
            **kw,
        )
        self._auth_refusals = Counter(
            names.AUTH_REFUSALS,
            "ImageService calls refused by authentication or client authorization, by reason.",
            ("reason",),
            **kw,
        )
        self._encodes = Histogram(
            names.ENCODES_PER_IMAGE,
            "Encodes tried for one result (autoquality, best format, max_bytes).",
            ("format", "method"),
            buckets=ENCODE_BUCKETS,
            **kw,
        )
        self._dssim = Histogram(
            names.ACHIEVED_DSSIM,
            "DSSIM of the returned file against the image encoded (dssim and ml methods).",
            ("format", "method"),
            buckets=DSSIM_BUCKETS,
            **kw,
        )
        self._prediction_error = Histogram(
            names.AUTOQUALITY_PREDICTION_ERROR,
            "ML autoquality: the final quality minus the model's predicted quality.",
            ("format", "model_version"),
            buckets=PREDICTION_ERROR_BUCKETS,
            **kw,
        )
        workers_gauge = Gauge(names.WORKERS, "Configured image workers.", **kw)
        workers_gauge.set(workers)
        build = Gauge(names.BUILD_INFO, "Build information.", tuple(sorted(info or {})), **kw)
        if info:
            build.labels(**info).set(1)

    def rpc_started(self, service: str, method: str) -> None:
        self._started.labels("unary", service, method).inc()

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        self._handled.labels("unary", service, method, code).inc()
        self._handling.labels("unary", service, method).observe(seconds)

    def step(self, op: str, seconds: float) -> None:
        self._step.labels(op).observe(seconds)

    def inference(self, model: str, seconds: float) -> None:
        self._inference.labels(model).observe(seconds)

    def error(self, reason: str) -> None:
        self._errors.labels(reason).inc()

    def degradation(self, reason: str, op: str) -> None:
        self._degradations.labels(reason, op).inc()

    def images_in_progress(self, delta: int) -> None:
        self._in_progress.inc(delta)

    def queue_depth(self, delta: int) -> None:
        self._queue.inc(delta)

    def image_bytes(self, direction: str, fmt: str, size: int) -> None:
        (self._input_bytes if direction == "input" else self._output_bytes).labels(fmt).observe(
            size
        )

    def triton_ready(self, ready: bool) -> None:
        self._triton_ready.set(1 if ready else 0)

    def detection_cache(self, hit: bool) -> None:
        self._detection_cache.labels("hit" if hit else "miss").inc()

    def small_face_pass(self, outcome: str) -> None:
        self._small_face_passes.labels(outcome).inc()

    def triton_call_abandoned(self, model: str) -> None:
        self._triton_calls_abandoned.labels(model).inc()

    def not_modified(self, source: str) -> None:
        self._not_modified.labels(source).inc()

    def processing_skipped(self, fmt: str) -> None:
        self._processing_skipped.labels(fmt).inc()

    def fallback_used(self, reason: str) -> None:
        self._fallback_used.labels(reason).inc()

    def auth_refused(self, reason: str) -> None:
        self._auth_refusals.labels(reason).inc()

    def encoding(self, fmt: str, method: str, encodes: int, dssim: float | None) -> None:
        self._encodes.labels(fmt, method).observe(encodes)
        if dssim is not None:
            self._dssim.labels(fmt, method).observe(dssim)

    def autoquality_prediction(
        self, fmt: str, model_version: str, predicted: int, final: int
    ) -> None:
        self._prediction_error.labels(fmt, model_version).observe(final - predicted)


class FanOutMetrics:
    """Sends every observation to several backends (Prometheus and, opt-in, DogStatsD)."""

    def __init__(self, *backends: Metrics) -> None:
        self._backends = backends

    def __getattr__(self, name: str):
        methods = [getattr(backend, name) for backend in self._backends]

        def fan_out(*args, **kwargs) -> None:
            for method in methods:
                method(*args, **kwargs)

        return fan_out


class NullMetrics:
    """Records nothing; for unit tests and tools that run the engine without a server."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
