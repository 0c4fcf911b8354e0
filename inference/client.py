"""Face detection through the Triton sidecar, on ``tritonclient.grpc.aio``.

`FaceDetector` is the service's one entry point to Triton: it letterboxes an RGB image
for both BlazeFace models, runs them concurrently over gRPC, decodes and merges their
boxes (`inference.blazeface`) and returns `Detection` objects in the image's pixels.

Contract with the service:

- One `FaceDetector` per process. Its gRPC channel is created lazily, by the first
  ``detect``/``ready`` call, inside the running event loop (a ``grpc.aio`` channel belongs
  to the loop it was made in); ``close()`` it on shutdown.
- Every Triton call carries ``client_timeout``. Triton unreachable, a deadline passed, or
  a model missing/not ready raise `InferenceUnavailable` (reasons ``TRITON_UNAVAILABLE``,
  ``TRITON_TIMEOUT``, ``MODEL_NOT_READY``); any other Triton error raises `InferenceError`
  with ``TRITON_<STATUS>``: a bug or a model-contract mismatch, not worth retrying.
- ``ready()`` is the readiness probe: server ready, every model ready, and every model's
  metadata and config match the tensors this code sends and decodes (names, dtypes,
  dims, and a batch dimension: ``max_batch_size >= 1``, config ``dims`` without it,
  metadata shapes ``[-1, ...]``). Each call sends a batch of one image; the server may
  batch calls together (``configs/gpu.pbtxt``), and its ``max_batch_size`` is its own
  tuning, so any value >= 1 holds the contract. A mismatch makes it False, with the
  reason logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from inference.blazeface import (
    CLASSIFICATORS_NAME,
    FULL_RANGE,
    INPUT_NAME,
    NUM_COORDS,
    REGRESSORS_NAME,
    SHORT_RANGE,
    BlazeFaceVariant,
    Letterbox,
    clip_boxes,
    decode,
    generate_anchors,
    letterbox,
    merge,
)
from inference.detection import Detection
from inference.errors import InferenceError, InferenceUnavailable

logger = logging.getLogger(__name__)

# Triton model name -> the BlazeFace variant it serves (model_repository/<name>/).
DEFAULT_MODELS: Mapping[str, BlazeFaceVariant] = {
    "blazeface_short_range": SHORT_RANGE,
    "blazeface_full_range": FULL_RANGE,
}

FACE = "face"

# The sidecar is on loopback: when it restarts, reconnect within ~a second instead of
# gRPC's default backoff (up to 120 s), during which every call would fail fast.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

_UNAVAILABLE_STATUSES = {
    "StatusCode.UNAVAILABLE": "TRITON_UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED": "TRITON_TIMEOUT",
    "StatusCode.NOT_FOUND": "MODEL_NOT_READY",
}


def to_inference_error(
    error: InferenceServerException, model_name: str | None = None
) -> InferenceError:
    """Map a tritonclient error to the domain errors (see the module docstring)."""
    status = error.status() or ""
    message = error.message() or str(error)
    where = f"{model_name}: " if model_name else ""
    reason = _UNAVAILABLE_STATUSES.get(status)
    lowered = message.lower()
    # Triton reports a model that is unknown, loading or unloaded with UNAVAILABLE or
    # INVALID_ARGUMENT depending on the version; the message is what tells them apart.
    if model_name and (
        "unknown model" in lowered or "is not ready" in lowered or "is not found" in lowered
    ):
        reason = "MODEL_NOT_READY"
    if reason is not None:
        return InferenceUnavailable(reason, f"{where}{message}")
    code = status.removeprefix("StatusCode.") or "UNKNOWN"
    return InferenceError(f"TRITON_{code}", f"{where}{message}")


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    variant: BlazeFaceVariant
    anchors: np.ndarray

    # Per-item dims, as the config declares them (max_batch_size > 0: without the batch
    # dimension). Tensors on the wire have a batch dimension of 1 in front.
    @property
    def inputs(self) -> dict[str, tuple[str, list[int]]]:
        return {INPUT_NAME: ("FP32", list(self.variant.input_shape[1:]))}

    @property
    def outputs(self) -> dict[str, tuple[str, list[int]]]:
        count = len(self.anchors)
        return {
            REGRESSORS_NAME: ("FP32", [count, NUM_COORDS]),
            CLASSIFICATORS_NAME: ("FP32", [count, 1]),
        }


def contract_problems(model: _Model, metadata, config: dict) -> list[str]:
    """How Triton's view of ``model`` differs from what this client sends and decodes.

    ``metadata`` is a ``ModelMetadataResponse``; ``config`` is ``get_model_config(...,
    as_json=True)["config"]``. Empty list: the contract holds.
    """
    problems = []
    if int(config.get("max_batch_size", 0)) < 1:
        problems.append(f"max_batch_size {config.get('max_batch_size', 0)} < 1: no batch dimension")
    for kind, expected, seen_meta, seen_config in (
        ("input", model.inputs, metadata.inputs, config.get("input", [])),
        ("output", model.outputs, metadata.outputs, config.get("output", [])),
    ):
        # Metadata shapes include the batch dimension (-1); config dims do not.
        meta = {t.name: (t.datatype, [int(d) for d in t.shape][1:]) for t in seen_meta}
        meta_batch = {t.name: [int(d) for d in t.shape][:1] for t in seen_meta}
        conf = {
            t["name"]: (
                t.get("data_type", "").removeprefix("TYPE_"),
                [int(d) for d in t.get("dims", [])],
            )
            for t in seen_config
        }
        if kind == "input" and set(meta) != set(expected):
            problems.append(f"inputs {sorted(meta)} != {sorted(expected)}")
        for name, want in expected.items():
            for source, seen in (("metadata", meta), ("config", conf)):
                if name not in seen:
                    problems.append(f"{kind} {name!r} missing from {source}")
                elif seen[name] != want:
                    problems.append(f"{kind} {name!r} in {source} is {seen[name]}, expected {want}")
            if name in meta_batch and meta_batch[name] != [-1]:
                problems.append(
                    f"{kind} {name!r} in metadata has batch dimension {meta_batch[name]}, "
                    "expected [-1]"
                )
    return problems


class FaceDetector:
    """Faces in an RGB image, from MediaPipe BlazeFace short- and full-range over Triton.

    Parameters
    ----------
    url
        Triton's gRPC ``host:port``, e.g. ``"127.0.0.1:8001"``.
    timeout_s
        ``client_timeout`` of every Triton call; ``detect`` can only shorten it.
    score_threshold
        Minimum confidence of a returned face (MediaPipe uses 0.5 for short range and
        0.6 for full range; one threshold applies to both here).
    nms_threshold
        IoU above which boxes are merged by weighted NMS (MediaPipe: 0.3).
    on_inference
        ``on_inference(model_name, seconds)`` after each successful Triton inference
        (the service's per-model latency histogram). Failed calls are not reported here:
        they raise.
    models
        Triton model name -> BlazeFace variant; defaults to ``model_repository/``'s.
    retry_after_s
        Circuit breaker: after Triton was found unavailable (a failed call or a failed
        ``ready()``), ``detect`` fails at once with ``TRITON_CIRCUIT_OPEN`` for this long,
        then lets one call through to probe; a success or a passing ``ready()`` closes it.
        A slow or dead sidecar then costs callers nothing instead of a timeout each.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 0.5,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        on_inference: Callable[[str, float], None] | None = None,
        *,
        models: Mapping[str, BlazeFaceVariant] = DEFAULT_MODELS,
        retry_after_s: float = 2.0,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.on_inference = on_inference
        self._models = tuple(
            _Model(name, variant, generate_anchors(variant)) for name, variant in models.items()
        )
        self._client: triton_grpc.InferenceServerClient | None = None
        self._not_ready_reason: str | None = None
        self.retry_after_s = retry_after_s
        self._breaker_opened: float | None = None  # time.monotonic() when it last opened

    @property
    def classes(self) -> frozenset[str]:
        return frozenset({FACE})

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(model.name for model in self._models)

    def _grpc(self) -> triton_grpc.InferenceServerClient:
        if self._client is None:
            self._client = triton_grpc.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def detect(self, rgb: np.ndarray, *, timeout_s: float | None = None) -> list[Detection]:
        """Faces in ``rgb`` (``(H, W, 3)`` uint8), best first, in ``rgb``'s pixels.

        ``timeout_s`` (e.g. the RPC's remaining deadline) caps the instance's
        ``timeout_s``. Raises `InferenceUnavailable` / `InferenceError` (module docstring)
        and ValueError for an image that is not ``(H, W, 3)`` uint8.
        """
        timeout = self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s)
        if timeout <= 0:
            raise InferenceUnavailable("TRITON_TIMEOUT", "no time left for inference")
        if self._breaker_opened is not None:
            if time.monotonic() - self._breaker_opened < self.retry_after_s:
                raise InferenceUnavailable(
                    "TRITON_CIRCUIT_OPEN", "Triton was unavailable moments ago; not calling it"
                )
            self._breaker_opened = time.monotonic()  # half-open: this call probes, others wait
        try:
            detections = await self._detect(rgb, timeout)
        except InferenceUnavailable:
            self._breaker_opened = time.monotonic()
            raise
        self._breaker_opened = None
        return detections

    async def _detect(self, rgb: np.ndarray, timeout: float) -> list[Detection]:
        # Letterboxing is a few ms of numpy, which releases the GIL: keep it off the loop.
        # timeout bounds each Triton call; this part is not counted in it.
        inputs = await asyncio.to_thread(self._letterbox_all, rgb)
        results = await self._infer_all(inputs, timeout)
        per_model = []
        for model, (_, box), (regressors, classificators) in zip(
            self._models, inputs, results, strict=True
        ):
            boxes, scores = decode(
                regressors, classificators, model.variant, self.score_threshold, model.anchors
            )
            per_model.append((box.to_image(boxes), scores))
        boxes, scores = merge(per_model, self.nms_threshold)
        height, width = rgb.shape[:2]
        detections = []
        for (left, top, right, bottom), score in zip(
            clip_boxes(boxes, width, height), scores, strict=True
        ):
            if right > left and bottom > top:
                detections.append(
                    Detection(
                        FACE,
                        float(score),
                        float(left),
                        float(top),
                        float(right - left),
                        float(bottom - top),
                    )
                )
        return detections

    def _letterbox_all(self, rgb: np.ndarray) -> list[tuple[np.ndarray, Letterbox]]:
        return [letterbox(rgb, model.variant.input_size) for model in self._models]

    async def _infer_all(self, inputs, timeout: float) -> list[tuple[np.ndarray, np.ndarray]]:
        tasks = [
            asyncio.ensure_future(self._infer(model, tensor, timeout))
            for model, (tensor, _) in zip(self._models, inputs, strict=True)
        ]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            # One failed (or we were cancelled): don't leave the other call running.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _infer(
        self, model: _Model, tensor: np.ndarray, timeout: float
    ) -> tuple[np.ndarray, np.ndarray]:
        infer_input = triton_grpc.InferInput(INPUT_NAME, list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor)
        outputs = [
            triton_grpc.InferRequestedOutput(REGRESSORS_NAME),
            triton_grpc.InferRequestedOutput(CLASSIFICATORS_NAME),
        ]
        started = time.perf_counter()
        try:
            result = await self._grpc().infer(
                model.name, [infer_input], outputs=outputs, client_timeout=timeout
            )
        except InferenceServerException as error:
            raise to_inference_error(error, model.name) from error
        elapsed = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(model.name, elapsed)
        try:
            regressors = result.as_numpy(REGRESSORS_NAME)
            classificators = result.as_numpy(CLASSIFICATORS_NAME)
        except ValueError as error:  # fewer bytes than the shape says
            raise InferenceError("TRITON_BAD_RESPONSE", f"{model.name}: {error}") from error
        expected = {name: [1, *dims] for name, (_, dims) in model.outputs.items()}
        got = {
            REGRESSORS_NAME: None if regressors is None else list(regressors.shape),
            CLASSIFICATORS_NAME: None if classificators is None else list(classificators.shape),
        }
        if got != expected:
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{model.name}: outputs {got}, expected {expected}"
            )
        return regressors, classificators

    async def ready(self) -> bool:
        """Server ready, every model ready, and every model's contract as expected."""
        try:
            problem = await self._readiness_problem()
        except InferenceServerException as error:
            problem = str(to_inference_error(error))
        if problem != self._not_ready_reason:
            if problem is None:
                logger.info("Triton at %s ready: %s", self.url, ", ".join(self.model_names))
            else:
                logger.warning("Triton at %s not ready: %s", self.url, problem)
            self._not_ready_reason = problem
        if problem is None:
            self._breaker_opened = None
        elif self._breaker_opened is None:
            self._breaker_opened = time.monotonic()
        return problem is None

    async def _readiness_problem(self) -> str | None:
        client = self._grpc()
        timeout = self.timeout_s
        if not await client.is_server_ready(client_timeout=timeout):
            return "server not ready"
        for model in self._models:
            if not await client.is_model_ready(model.name, client_timeout=timeout):
                return f"{model.name}: model not ready"
            metadata = await client.get_model_metadata(model.name, client_timeout=timeout)
            config = (
                await client.get_model_config(model.name, as_json=True, client_timeout=timeout)
            )["config"]
            problems = contract_problems(model, metadata, config)
            if problems:
                return f"{model.name}: contract mismatch: " + "; ".join(problems)
        return None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> FaceDetector:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
