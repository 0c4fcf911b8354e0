"""DogStatsD backend of the metrics interface (opt-in: IMAGESVC_DOGSTATSD_ENABLED=true).

The agent address comes from DD_AGENT_HOST / DD_DOGSTATSD_PORT (or DD_DOGSTATSD_URL), and the
client adds DD_ENV / DD_SERVICE / DD_VERSION as unified service tags itself.
"""

from __future__ import annotations

from datadog.dogstatsd import DogStatsd

from imagesvc.telemetry import names


class DogStatsdMetrics:
    def __init__(self, namespace: str, client: DogStatsd | None = None) -> None:
        self._statsd = client or DogStatsd(namespace=namespace, disable_telemetry=True)
        self._in_progress = 0

    def rpc_started(self, service: str, method: str) -> None:
        pass  # DogStatsD counts completions; "started" adds nothing a dashboard uses

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        tags = [f"grpc_service:{service}", f"grpc_method:{method}", f"grpc_code:{code}"]
        self._statsd.increment(names.DD_RPC_HANDLED, tags=tags)
        self._statsd.distribution(names.DD_RPC_DURATION, seconds, tags=tags)

    def step(self, op: str, seconds: float) -> None:
        self._statsd.distribution(names.DD_STEP_DURATION, seconds, tags=[f"op:{op}"])

    def inference(self, model: str, seconds: float) -> None:
        self._statsd.distribution(names.DD_INFERENCE_DURATION, seconds, tags=[f"model:{model}"])

    def error(self, reason: str) -> None:
        self._statsd.increment(names.DD_ERRORS, tags=[f"reason:{reason}"])

    def degradation(self, reason: str, op: str) -> None:
        self._statsd.increment(names.DD_DEGRADATIONS, tags=[f"reason:{reason}", f"op:{op}"])

    def images_in_progress(self, delta: int) -> None:
        self._in_progress += delta
        self._statsd.gauge(names.DD_IMAGES_IN_PROGRESS, self._in_progress)

    def queue_depth(self, delta: int) -> None:
        pass

    def image_bytes(self, direction: str, fmt: str, size: int) -> None:
        pass

    def triton_ready(self, ready: bool) -> None:
        self._statsd.gauge(names.DD_TRITON_READY, 1 if ready else 0)

    def detection_cache(self, hit: bool) -> None:
        result = "hit" if hit else "miss"
        self._statsd.increment(names.DD_DETECTION_CACHE_LOOKUPS, tags=[f"result:{result}"])

    def small_face_pass(self, outcome: str) -> None:
        self._statsd.increment(names.DD_SMALL_FACE_PASSES, tags=[f"outcome:{outcome}"])

    def triton_call_abandoned(self, model: str) -> None:
        self._statsd.increment(names.DD_TRITON_CALLS_ABANDONED, tags=[f"model:{model}"])

    def not_modified(self, source: str) -> None:
        self._statsd.increment(names.DD_NOT_MODIFIED, tags=[f"source:{source}"])

    def processing_skipped(self, fmt: str) -> None:
        self._statsd.increment(names.DD_PROCESSING_SKIPPED, tags=[f"format:{fmt}"])

    def fallback_used(self, reason: str) -> None:
        self._statsd.increment(names.DD_FALLBACK_USED, tags=[f"reason:{reason}"])

    def auth_refused(self, reason: str) -> None:
        self._statsd.increment(names.DD_AUTH_REFUSALS, tags=[f"reason:{reason}"])

    def encoding(self, fmt: str, method: str, encodes: int, dssim: float | None) -> None:
        tags = [f"format:{fmt}", f"method:{method}"]
        self._statsd.distribution(names.DD_ENCODES_PER_IMAGE, encodes, tags=tags)
        if dssim is not None:
            self._statsd.distribution(names.DD_ACHIEVED_DSSIM, dssim, tags=tags)

    def autoquality_prediction(
        self, fmt: str, model_version: str, predicted: int, final: int
    ) -> None:
        tags = [f"format:{fmt}", f"model_version:{model_version}"]
        self._statsd.distribution(
            names.DD_AUTOQUALITY_PREDICTION_ERROR, final - predicted, tags=tags
        )

    def close(self) -> None:
        self._statsd.flush()
        self._statsd.close_socket()
