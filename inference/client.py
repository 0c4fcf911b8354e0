"""Object detection through the Triton sidecar, on ``tritonclient.grpc.aio``.

`Detector` is the service's one entry point to Triton. It holds a set of detection models
(`inference.models.DetectionModel`: one Triton model each, its classes from its
``classes.txt``); ``detect`` runs only the models that serve the requested classes, all
concurrently over gRPC, decodes each model's outputs and merges the detections. By default
the models are `shipped_models()`: BlazeFace short and full range (``face``), MediaPipe pose
detection (``person``) and palm detection (``hand``); another model family joins the list
that `shipped_models` builds.

Merging (`merge_detections`): each model applies its own threshold and NMS
(`DetectionModel.decode`), except the models of one NMS group (an optional ``nms_group``
attribute; the BlazeFace pair), which return their raw candidates: the client runs one
weighted NMS (``nms_threshold``, MediaPipe's 0.3) over the union of the group's candidates and
clips the result, exactly as the short- and full-range boxes were always merged. When several
models (or groups) still serve one class, their detections of that class go through one more
weighted NMS over their union: an object two models see comes out once, its box the
score-weighted mean of theirs, its score and ``model`` those of the best. A class found by one
model is returned as that model found it. Faces then lose every box that wholly contains two
better faces (`inference.face_refine.suppress_group_boxes`: at low resolution a model sees two
neighbours as one weaker face).

The tiled pass (`Detector.detect_tiles`, issue 8): the service decides when to run it
(`face_refine.needs_tiled_pass`) and hands a larger copy of the image; the client cuts it into
overlapping tiles (`face_refine.plan_tiles`), sends them to the full-range BlazeFace model (see
"Tile requests" below), drops boxes cut by an inner tile edge, maps the rest back
to the first pass's pixels and merges them with its faces in one weighted NMS, each tile's boxes
a list of their own: ``merge_detections([first_faces, *tiles])``. The first pass's faces are
already the BlazeFace group's merge (the short- and full-range candidates through one weighted
NMS), so this is ``merge_detections([short, full, *tiles], groups=["blazeface"] * 2 + [None,
...])`` step for step. Group boxes are suppressed again on the result.

Face hints (`Detector.face_hints`): what tells the service to tile when the first pass found no
face. The full-range model looks at `face_refine.HINT_GRID` tiles of the first pass's own input
(four, a few more for a long image; no larger copy), at `face_refine.HINT_SCORE_THRESHOLD`;
the boxes it finds are returned as hints, in that input's pixels, and never as detections: the
service counts them (`face_refine.needs_tiled_pass`).

Tile requests (both of the above, `Detector._run_tiles`): the letterboxed tiles all have the
model's input shape, so when the model's served ``max_batch_size`` (learned by ``ready()``, see
``Detector.max_batch_sizes``) is 2 or more, they go stacked, as few requests of at most
``max_batch_size`` tiles as will hold them, all in flight at once; each row of the outputs is
decoded with its own tile's letterbox. The full-range model has one CPU instance: separate
requests would queue behind each other (the 4-tile hints: 43.7 ms as four requests, 29.6 ms
as one, timed alone). When the limit is unknown (``ready()`` has not passed yet) or 1, each
tile is a request of its own, all at once; so is always a tile whose tensors differ in shape
from the others'. Batched or not, the detections are the same.

Contract with the service:

- One `Detector` per process. Its gRPC channel is created lazily, by the first
  ``detect``/``ready`` call, inside the running event loop (a ``grpc.aio`` channel belongs
  to the loop it was made in); ``close()`` it on shutdown.
- Every Triton call has a timeout; an inference request is never cancelled when it passes
  (ABANDONED_CALL_DEADLINE_S says why), only no longer waited for. Triton unreachable, a
  deadline passed, or a model missing/not ready raise `InferenceUnavailable` (reasons ``TRITON_UNAVAILABLE``,
  ``TRITON_TIMEOUT``, ``MODEL_NOT_READY``); any other Triton error raises `InferenceError`
  with ``TRITON_<STATUS>``: a bug or a model-contract mismatch, not worth retrying.
- ``ready()`` is the readiness probe: server ready, every model ready, and every model's
  metadata and config match the tensors this code sends and decodes (names, dtypes,
  dims, and a batch dimension: ``max_batch_size >= 1``, config ``dims`` without it,
  metadata shapes ``[-1, ...]``). ``detect`` sends a batch of one image per model; the
  server may batch calls together (``configs/gpu.pbtxt``), and its ``max_batch_size`` is
  its own tuning, so any value >= 1 holds the contract: the tiles (above) go in batches
  of up to that many. A mismatch makes it False, with the reason logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from inference import face_refine
from inference.breaker import CircuitBreaker
from inference.ssd import clip_boxes, iou
from inference.detection import Detection
from inference.errors import CallerDeadlinePassed, InferenceError, InferenceUnavailable
from inference.mediapipe_detectors import MediaPipeDetector
from inference.models import DetectionModel

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The models of model_repository/, in the order `shipped_models` builds them.
DEFAULT_MODELS: tuple[str, ...] = (
    "blazeface_short_range",
    "blazeface_full_range",
    "pose_detection",
    "palm_detection_full",
)
FACE_MODELS = frozenset({"blazeface_short_range", "blazeface_full_range"})

FACE = "face"
FACE_NMS_GROUP = "blazeface"
# The model the tiled pass runs on each tile (`Detector.detect_tiles`).
TILE_MODEL = "blazeface_full_range"
# Models a thumbnail's detection leaves out (``detect(..., thumbnail=True)``): the engine's
# "thumbnail placed by its detections" of a camera-size source, which only places a small crop
# by the faces it can show. On the labelled photos upscaled to 2448-4000 px, at the thumbnail's
# input, the full-range model alone found every face the pair found (73 of the 76 a 256 px
# thumbnail shows, 81 of 117 in all) and none of the pair's 4 false boxes on 118 face-free
# cases (bench/detection_camera.py): the short-range model, which sees the frame at 128 px,
# only finds faces that fill much of it, which the full-range model finds too.
THUMBNAIL_SKIPPED_MODELS = frozenset({"blazeface_short_range"})

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_model_repository() -> Path:
    """Where the models' ``classes.txt`` files are: ``model_repository/`` beside the
    ``inference`` package (a source checkout), else ``./model_repository`` (the service
    image runs in ``/app``, which holds it)."""
    beside = REPO_ROOT / "model_repository"
    return beside if beside.is_dir() else Path(os.getcwd()) / "model_repository"


# The short-range face model's threshold over IMAGESVC_DETECTION_SCORE_THRESHOLD (measured:
# inference/face_refine.py MODEL_SCORE_THRESHOLDS).
SHORT_RANGE_EXTRA_SCORE = 0.1


def shipped_models(
    *,
    repository: str | os.PathLike | None = None,
    enabled: Collection[str] | None = None,
    face_score_threshold: float = 0.5,
    nms_threshold: float = 0.3,
) -> list[DetectionModel]:
    """The detection models the service runs, built from settings.

    ``repository``: the folder with ``<model>/classes.txt`` (default:
    `default_model_repository`). ``enabled``: the Triton model names to keep (default: all);
    a name that is not shipped is an error. ``face_score_threshold`` is the full-range
    BlazeFace model's (``detection_score_threshold``), the short-range one's is
    SHORT_RANGE_EXTRA_SCORE higher; the pose and palm detectors use
    MediaPipe's thresholds (`inference.mediapipe_detectors`). ``nms_threshold`` is the
    BlazeFace pair's weighted-NMS IoU. Another model family is one more entry in the list.
    """
    folder = Path(repository) if repository else default_model_repository()
    if enabled is not None:
        unknown = sorted(set(enabled) - set(DEFAULT_MODELS))
        if unknown:
            raise ValueError(f"unknown detection models {unknown}; shipped: {list(DEFAULT_MODELS)}")
    models: list[DetectionModel] = [
        # Both BlazeFace models: one weighted NMS over their union, in the client.
        MediaPipeDetector.from_repository(
            "blazeface_short_range",
            folder,
            # Short range scored textures (a cat's face, a ladybird) at 0.50-0.54: it takes
            # SHORT_RANGE_EXTRA_SCORE more (bench/README.md "Detection").
            score_threshold=min(1.0, face_score_threshold + SHORT_RANGE_EXTRA_SCORE),
            nms_threshold=nms_threshold,
            nms_group=FACE_NMS_GROUP,
        ),
        MediaPipeDetector.from_repository(
            "blazeface_full_range",
            folder,
            score_threshold=face_score_threshold,
            nms_threshold=nms_threshold,
            nms_group=FACE_NMS_GROUP,
        ),
        MediaPipeDetector.from_repository("pose_detection", folder),
        MediaPipeDetector.from_repository("palm_detection_full", folder),
    ]
    return [m for m in models if enabled is None or m.name in enabled]


# The sidecar is on loopback: when it restarts, reconnect within ~a second instead of
# gRPC's default backoff (up to 120 s), during which every call would fail fast.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# No inference request is ever cancelled. Triton 2.51 (release 24.10: the nvidia-pytriton
# sidecar and the k8s image) can die of a SIGSEGV in its gRPC infer handler when a client
# cancels a request in flight, which is what a deadline shorter than the inference does
# (triton-inference-server/server#7368, fixed in 24.12 by #7840; a related race, #8034, in
# 25.01). Measured here (tests/inference/test_uncancelled_calls.py): 300 rounds of four
# detects with 4-15 ms deadlines killed the local sidecar every time. So a call's timeout is
# kept on this side: the caller stops waiting and gets TRITON_TIMEOUT, and the request is left
# to finish (abandoned). Its own gRPC deadline is ABANDONED_CALL_DEADLINE_S, far past what a
# live Triton takes; a client holds at most MAX_ABANDONED_CALLS of them (their tensors stay in
# memory until Triton answers): Triton that has left that many unanswered is unavailable.
ABANDONED_CALL_DEADLINE_S = 60.0
MAX_ABANDONED_CALLS = 16
# How long close() lets abandoned calls finish before closing the channel under them.
CLOSE_GRACE_S = 2.0

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


def call_timeout(default_s: float, timeout_s: float | None) -> float:
    """The ``client_timeout`` of a call: the client's ``default_s``, capped by the caller's
    ``timeout_s`` (e.g. the RPC's remaining deadline). No time left raises
    `InferenceUnavailable` ``TRITON_TIMEOUT`` without calling Triton."""
    timeout = default_s if timeout_s is None else min(default_s, timeout_s)
    if timeout <= 0:
        raise InferenceUnavailable("TRITON_TIMEOUT", "no time left for inference")
    return timeout


def _dims_match(seen: tuple[str, list[int]], want: tuple[str, list[int]]) -> bool:
    """Same datatype and dims; a -1 in ``want`` (a dimension the model decides) matches any."""
    return seen[0] == want[0] and (
        len(seen[1]) == len(want[1])
        and all(w == -1 or s == w for s, w in zip(seen[1], want[1], strict=True))
    )


def contract_problems(model: DetectionModel, metadata, config: dict) -> list[str]:
    """How Triton's view of ``model`` differs from what this client sends and decodes.

    ``metadata`` is a ``ModelMetadataResponse``; ``config`` is ``get_model_config(...,
    as_json=True)["config"]``. Empty list: the contract holds.
    """
    problems = []
    # A model exported with its batch fixed at 1 (a user's YOLO, `batched` False) is served
    # with max_batch_size 0: its config dims and metadata shapes then start with that 1.
    batched = getattr(model, "batched", True)
    max_batch = int(config.get("max_batch_size", 0))
    if batched and max_batch < 1:
        problems.append(f"max_batch_size {max_batch} < 1: no batch dimension")
    if not batched and max_batch != 0:
        problems.append(f"max_batch_size {max_batch} != 0 for a model fixed at batch 1")
    batch_dim = [-1] if batched else [1]
    for kind, expected, seen_meta, seen_config in (
        ("input", model.inputs, metadata.inputs, config.get("input", [])),
        ("output", model.outputs, metadata.outputs, config.get("output", [])),
    ):
        # Metadata shapes include the batch dimension; config dims do unless unbatched.
        meta = {t.name: (t.datatype, [int(d) for d in t.shape][1:]) for t in seen_meta}
        meta_batch = {t.name: [int(d) for d in t.shape][:1] for t in seen_meta}
        conf = {
            t["name"]: (
                t.get("data_type", "").removeprefix("TYPE_"),
                [int(d) for d in t.get("dims", [])][0 if batched else 1 :],
            )
            for t in seen_config
        }
        if kind == "input" and set(meta) != set(expected):
            problems.append(f"inputs {sorted(meta)} != {sorted(expected)}")
        for name, want in expected.items():
            for source, seen in (("metadata", meta), ("config", conf)):
                if name not in seen:
                    problems.append(f"{kind} {name!r} missing from {source}")
                elif not _dims_match(seen[name], want):
                    problems.append(f"{kind} {name!r} in {source} is {seen[name]}, expected {want}")
            if name in meta_batch and meta_batch[name] != batch_dim:
                problems.append(
                    f"{kind} {name!r} in metadata has batch dimension {meta_batch[name]}, "
                    f"expected {batch_dim}"
                )
    return problems


class TritonModelClient:
    """The part every Triton client here shares: one tritonclient aio client for ``url``, made
    on first use inside the event loop of that call (its gRPC channel belongs to that loop), and
    ``close()`` for shutdown. Subclasses set ``url`` and ``_client = None`` in ``__init__``."""

    url: str
    _client: triton_grpc.InferenceServerClient | None

    def _connect_settings(
        self,
        url: str,
        timeout_s: float,
        breaker: CircuitBreaker | None,
        retry_after_s: float,
        on_inference: Callable[[str, float], None] | None,
        on_abandoned: Callable[[str], None] | None = None,
    ) -> None:
        """What a model client's ``__init__`` takes in common: the address, every call's
        timeout, the circuit breaker (the detector's when shared, else its own), the
        ``on_inference(model, seconds)`` hook and ``on_abandoned(model)``, called for each
        inference request the caller stopped waiting for (ABANDONED_CALL_DEADLINE_S)."""
        self.url = url
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker(retry_after_s)
        self.on_inference = on_inference
        self.on_abandoned = on_abandoned
        self._client = None
        self._abandoned: set[asyncio.Future] = set()

    @property
    def abandoned_calls(self) -> int:
        """Inference requests whose caller stopped waiting and that Triton has not answered
        yet (see ABANDONED_CALL_DEADLINE_S)."""
        return len(self._abandoned)

    async def _infer_call(
        self,
        model_name: str,
        inputs: list[triton_grpc.InferInput],
        outputs: list[triton_grpc.InferRequestedOutput],
        timeout: float,
        *,
        callers_deadline: bool | None = None,
    ) -> Any:
        """Triton's answer to one inference request, waited for at most ``timeout`` seconds.

        The request is never cancelled (see ABANDONED_CALL_DEADLINE_S): when ``timeout``
        passes, or the caller is cancelled, it is left to finish, and `InferenceUnavailable`
        ``TRITON_TIMEOUT`` is raised: a `CallerDeadlinePassed` when ``callers_deadline``
        (default: ``timeout`` is shorter than the client's own ``timeout_s``), i.e. the
        caller's deadline ran out, not the time Triton is allowed.
        With MAX_ABANDONED_CALLS still unanswered, raises ``TRITON_UNAVAILABLE`` without
        calling. Triton's own errors raise tritonclient's `InferenceServerException`.
        """
        if len(self._abandoned) >= MAX_ABANDONED_CALLS:
            raise InferenceUnavailable(
                "TRITON_UNAVAILABLE",
                f"{model_name}: Triton has not answered {len(self._abandoned)} earlier calls",
            )
        call = asyncio.ensure_future(
            self._grpc().infer(
                model_name,
                inputs,
                outputs=outputs,
                client_timeout=max(timeout, ABANDONED_CALL_DEADLINE_S),
            )
        )
        try:
            await asyncio.wait({call}, timeout=timeout)
        finally:
            if not call.done():
                self._abandon(call)
                if self.on_abandoned is not None:
                    self.on_abandoned(model_name)
        if not call.done():
            message = f"{model_name}: no answer within {timeout:.3g} s"
            if callers_deadline is None:
                callers_deadline = timeout < self.timeout_s
            if callers_deadline:
                raise CallerDeadlinePassed(message)
            raise InferenceUnavailable("TRITON_TIMEOUT", message)
        return call.result()

    def _abandon(self, call: asyncio.Future) -> None:
        self._abandoned.add(call)

        def finished(done: asyncio.Future) -> None:
            self._abandoned.discard(done)
            if not done.cancelled():
                done.exception()  # nobody awaits it: retrieved, so asyncio does not log it

        call.add_done_callback(finished)

    def _grpc(self) -> triton_grpc.InferenceServerClient:
        if self._client is None:
            self._client = triton_grpc.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def close(self) -> None:
        """Close the channel, after giving abandoned calls up to CLOSE_GRACE_S to finish
        (closing it cancels those still in flight)."""
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=CLOSE_GRACE_S)
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class Detector(TritonModelClient):
    """Objects in an RGB image, from a set of detection models over Triton.

    Parameters
    ----------
    url
        Triton's gRPC ``host:port``, e.g. ``"127.0.0.1:8001"``.
    timeout_s
        ``client_timeout`` of every Triton call; ``detect`` can only shorten it.
    score_threshold
        Minimum confidence of a returned face, for the default models (both BlazeFace
        models; MediaPipe uses 0.5 for short range and 0.6 for full range). Ignored when
        ``models`` is given: each model has its own.
    nms_threshold
        IoU above which boxes are merged by weighted NMS (MediaPipe: 0.3): within each
        default BlazeFace model, and across the models that serve one class.
    on_inference
        ``on_inference(model_name, seconds)`` after each successful Triton inference
        request (the service's per-model latency histogram): a batched request of several
        tiles (module docstring: tile requests) reports once, its time that of the whole
        batch. Failed calls are not reported here: they raise.
    models
        The `DetectionModel` objects to hold; default `shipped_models()` (model_repository/).
    retry_after_s
        Circuit breaker: after Triton was found unavailable (a failed call or a failed
        ``ready()``), ``detect`` fails at once with ``TRITON_CIRCUIT_OPEN`` for this long,
        then lets one call through to probe; a success or a passing ``ready()`` closes it.
        A slow or dead sidecar then costs callers nothing instead of a timeout each.
        Ignored when ``breaker`` is given.
    breaker
        The `inference.breaker.CircuitBreaker` to use, e.g. one shared with the
        `inference.autoquality_client.QualityPredictor` of the same sidecar, so that a
        failure either sees makes both fail fast. Default: a breaker of its own, with
        ``retry_after_s``.
    on_abandoned
        ``on_abandoned(model_name)`` for each inference request the caller stopped waiting
        for (its timeout passed, or it was cancelled): the request is left to finish, never
        cancelled (ABANDONED_CALL_DEADLINE_S says why).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 0.5,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        on_inference: Callable[[str, float], None] | None = None,
        *,
        models: Iterable[DetectionModel] | None = None,
        retry_after_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        on_abandoned: Callable[[str], None] | None = None,
    ) -> None:
        self._connect_settings(url, timeout_s, breaker, retry_after_s, on_inference, on_abandoned)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        if models is None:
            models = shipped_models(
                face_score_threshold=score_threshold, nms_threshold=nms_threshold
            )
        self._models: tuple[DetectionModel, ...] = tuple(models)
        names = [model.name for model in self._models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is listed twice: {names}")
        weights: dict[str, float] = {}
        for model in self._models:
            for name, weight in model.class_weights.items():
                if weights.setdefault(name, weight) != weight:
                    raise ValueError(
                        f"class {name!r}: weight {weight} in {model.name}'s classes file, "
                        f"{weights[name]} in another's"
                    )
        self._class_weights = MappingProxyType(weights)
        self._classes = frozenset(c for model in self._models for c in model.classes)
        self._tile_model = _tile_model(self._models, nms_threshold)
        self._hint_model = _tile_model(
            self._models, nms_threshold, face_refine.HINT_SCORE_THRESHOLD
        )
        self._not_ready_reason: str | None = None
        # Model name -> its served max_batch_size, from the last readiness check that read it
        # with the contract holding (module docstring: tile requests).
        self._max_batch: dict[str, int] = {}

    @property
    def retry_after_s(self) -> float:
        """The circuit breaker's ``retry_after_s`` (shared with whoever shares it)."""
        return self.breaker.retry_after_s

    @retry_after_s.setter
    def retry_after_s(self, value: float) -> None:
        self.breaker.retry_after_s = value

    @property
    def classes(self) -> frozenset[str]:
        """Every class some model can return."""
        return self._classes

    @property
    def class_weights(self) -> Mapping[str, float]:
        """Class -> weight, as the models' classes files give them (classes without one are
        absent)."""
        return self._class_weights

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(model.name for model in self._models)

    @property
    def models(self) -> tuple[DetectionModel, ...]:
        return self._models

    @property
    def max_batch_sizes(self) -> Mapping[str, int]:
        """Model name -> the ``max_batch_size`` Triton serves it with, as ``ready()`` last
        read it (a model whose contract did not hold is absent; nothing before the first
        ``ready()``). The tiles go in batches of up to this many (module docstring)."""
        return MappingProxyType(self._max_batch)

    @property
    def can_tile(self) -> bool:
        """Whether ``detect_tiles`` can run: the full-range BlazeFace model is one of the
        models (``IMAGESVC_DETECTION_MODELS`` may switch it off)."""
        return self._tile_model is not None

    def models_for(
        self, classes: Collection[str] | None, *, thumbnail: bool = False
    ) -> tuple[DetectionModel, ...]:
        """The models ``detect`` calls for ``classes`` (None: all); for a ``thumbnail``, less
        those of THUMBNAIL_SKIPPED_MODELS whose classes another called model serves."""
        models = self._models
        if classes is not None:
            models = tuple(m for m in models if not set(classes).isdisjoint(m.classes))
        if thumbnail:
            kept = [m for m in models if m.name not in THUMBNAIL_SKIPPED_MODELS]
            served = {name for m in kept for name in m.classes}
            models = tuple(m for m in models if m in kept or not set(m.classes) <= served)
        return models

    def input_side(self, classes: Collection[str] | None, *, thumbnail: bool = False) -> int | None:
        """The long side of the largest image the models ``detect`` calls for ``classes``
        look at (`models_for`; the models' ``input_side``): a larger input only costs its
        resampling. None when no model is called or one does not say."""
        sides = [
            getattr(m, "input_side", None) for m in self.models_for(classes, thumbnail=thumbnail)
        ]
        if not sides or any(not isinstance(side, int) or side <= 0 for side in sides):
            return None
        return max(sides)

    async def detect(
        self,
        rgb: np.ndarray,
        *,
        classes: frozenset[str] | None = None,
        timeout_s: float | None = None,
        thumbnail: bool = False,
    ) -> list[Detection]:
        """Objects of ``classes`` (None: every class) in ``rgb`` (``(H, W, 3)`` uint8), best
        first, in ``rgb``'s pixels.

        Only the models serving one of ``classes`` run, concurrently; classes no model
        serves find nothing (no Triton call when none is left). ``thumbnail``: the detections
        only place a thumbnail of a camera-size source; THUMBNAIL_SKIPPED_MODELS do not run
        (`models_for`). ``timeout_s`` (e.g. the RPC's
        remaining deadline) caps the instance's ``timeout_s``. Raises `InferenceUnavailable`
        / `InferenceError` (module docstring) and ValueError for an image that is not
        ``(H, W, 3)`` uint8.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        models = self.models_for(classes, thumbnail=thumbnail)
        if not models:
            return []
        timeout = self._call_timeout(timeout_s)
        per_model = await self._guarded(self._run_all(models, rgb, timeout))
        height, width = rgb.shape[:2]
        groups = [getattr(model, "nms_group", None) for model in models]
        detections = merge_detections(
            per_model, self.nms_threshold, groups=groups, image_size=(width, height)
        )
        if classes is not None:
            detections = [d for d in detections if d.class_name in classes]
        return suppress_face_groups(detections)

    async def detect_tiles(
        self,
        rgb: np.ndarray,
        *,
        first: Sequence[Detection],
        first_size: tuple[int, int],
        timeout_s: float | None = None,
        grid: tuple[int, int] = face_refine.TILE_GRID,
    ) -> list[Detection]:
        """The tiled pass (module docstring): ``first`` (the first pass's detections, in the
        pixels of its ``first_size`` = (width, height) input) with the faces found on the tiles
        of ``rgb`` merged in, best first, in ``first_size`` pixels.

        ``rgb`` is the same picture as the first pass's input, larger (``(H, W, 3)`` uint8), or
        that input itself, cut on a smaller ``grid`` (`face_refine.needs_input_tiles`: a
        source too small for a larger copy). ``grid``: `face_refine.plan_tiles`'.
        The tiles go to the full-range model in batched requests, or one request per tile
        (module docstring: tile requests), all sent at once; each carries ``timeout_s``
        capped by the instance's ``timeout_s``, as in ``detect``. Detections of
        other classes in ``first`` are returned as they are. Raises as ``detect`` does (the
        circuit breaker included), and ValueError when the detector cannot tile
        (``can_tile``).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        if len(first_size) != 2 or not all(side > 0 for side in first_size):
            raise ValueError(f"first_size {first_size!r} is not the (width, height) of an image")
        model = self._tile_model
        if model is None:
            raise ValueError(f"the tiled pass needs {TILE_MODEL}, not among {self.model_names}")
        timeout = self._call_timeout(timeout_s)
        height, width = rgb.shape[:2]
        tiles = face_refine.plan_tiles(width, height, grid)
        lists = await self._tile_faces(model, rgb, tiles, first_size, timeout)
        faces = [d for d in first if d.class_name == FACE]
        others = [d for d in first if d.class_name != FACE]
        merged = _clipped(merge_detections([faces, *lists], self.nms_threshold), *first_size)
        merged = suppress_face_groups([*merged, *others])
        merged.sort(key=lambda d: -d.confidence)
        return merged

    async def face_hints(
        self, rgb: np.ndarray, *, timeout_s: float | None = None
    ) -> list[Detection]:
        """Face hints on the first pass's input ``rgb`` (module docstring): the full-range
        model's boxes on `face_refine.HINT_GRID` tiles of it, at
        `face_refine.HINT_SCORE_THRESHOLD`, best first, in ``rgb``'s pixels. They are not
        detections: the service counts them to decide on the tiled pass
        (`face_refine.needs_tiled_pass`). The tiles go as ``detect_tiles``'s do, each request
        with ``timeout_s`` capped as in ``detect``; raises as ``detect`` does, and ValueError when
        the detector cannot tile (``can_tile``)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        model = self._hint_model
        if model is None:
            raise ValueError(f"face hints need {TILE_MODEL}, not among {self.model_names}")
        timeout = self._call_timeout(timeout_s)
        height, width = rgb.shape[:2]
        tiles = face_refine.plan_tiles(width, height, face_refine.HINT_GRID)
        lists = await self._tile_faces(model, rgb, tiles, (width, height), timeout)
        return _clipped(merge_detections(lists, self.nms_threshold), width, height)

    async def _tile_faces(
        self,
        model: DetectionModel,
        rgb: np.ndarray,
        tiles: Sequence[face_refine.Tile],
        size: tuple[int, int],
        timeout: float,
    ) -> list[list[Detection]]:
        """Each tile's faces (behind the circuit breaker), those cut by an inner tile edge
        dropped, mapped to an image of ``size`` = (width, height): one list per tile."""
        per_tile = await self._guarded(self._run_tiles(model, rgb, tiles, timeout))
        height, width = rgb.shape[:2]
        scale_x, scale_y = width / size[0], height / size[1]
        lists = []
        for tile, found in zip(tiles, per_tile, strict=True):
            boxes = np.array([[d.left, d.top, d.right, d.bottom] for d in found], np.float64)
            scores = np.array([d.confidence for d in found], np.float64)
            boxes, scores = face_refine.drop_tile_edge_boxes(boxes, scores, tile, width, height)
            boxes = face_refine.tile_to_image(boxes, tile, scale_x, scale_y)
            lists.append(_detections(FACE, boxes, scores, model.name))
        return lists

    def _call_timeout(self, timeout_s: float | None) -> float:
        return call_timeout(self.timeout_s, timeout_s)

    async def _guarded(self, calls: Coroutine[Any, Any, T]) -> T:
        """``calls`` (Triton requests) behind the circuit breaker (see ``retry_after_s``)."""
        return await self.breaker.guarded(calls)

    async def _run_tiles(
        self,
        model: DetectionModel,
        rgb: np.ndarray,
        tiles: Sequence[face_refine.Tile],
        timeout: float,
    ) -> list[list[Detection]]:
        """Each tile's detections, in the tile's pixels (clipped to it), in the order of
        ``tiles``: batched requests of up to the model's max batch, or one request per tile
        (module docstring: tile requests), all in flight at once."""

        def prepare() -> list[tuple[dict[str, np.ndarray], Any]]:
            return [
                model.prepare(np.ascontiguousarray(rgb[t.top : t.bottom, t.left : t.right]))
                for t in tiles
            ]

        # Letterboxing twelve tiles is ~10 ms of numpy: one hop off the loop for all of them.
        prepared = await asyncio.to_thread(prepare)
        sizes = [(tile.width, tile.height) for tile in tiles]
        batches = _tile_batches(
            model, [tensors for tensors, _ in prepared], self._tile_batch(model)
        )

        async def run(batch: list[int]) -> list[list[Detection]]:
            if len(batch) == 1:
                (index,) = batch
                tensors, state = prepared[index]
                outputs = await self._infer(model, tensors, timeout)
                return [model.decode(outputs, state, sizes[index])]
            stacked = {
                name: np.concatenate([prepared[i][0][name] for i in batch]) for name in model.inputs
            }
            outputs = await self._infer(model, stacked, timeout)
            return [
                model.decode(
                    {name: value[row : row + 1] for name, value in outputs.items()},
                    prepared[index][1],
                    sizes[index],
                )
                for row, index in enumerate(batch)
            ]

        found = await _gather_all([run(batch) for batch in batches])
        per_tile: list[list[Detection]] = [[] for _ in tiles]
        for batch, lists in zip(batches, found, strict=True):
            for index, detections in zip(batch, lists, strict=True):
                per_tile[index] = detections
        return per_tile

    def _tile_batch(self, model: DetectionModel) -> int:
        """How many tiles one request to ``model`` may carry: its learned max batch (1 when
        unknown, or for a model fixed at a batch of 1)."""
        if not getattr(model, "batched", True):
            return 1
        return max(1, self._max_batch.get(model.name, 1))

    async def _run_all(
        self, models: Sequence[DetectionModel], rgb: np.ndarray, timeout: float
    ) -> list[list[Detection]]:
        return await _gather_all([self._run(model, rgb, timeout) for model in models])

    async def _run(self, model: DetectionModel, rgb: np.ndarray, timeout: float) -> list[Detection]:
        # Letterboxing is a few ms of numpy, which releases the GIL: keep it off the loop.
        # timeout bounds the Triton call; this part is not counted in it.
        tensors, state = await asyncio.to_thread(model.prepare, rgb)
        outputs = await self._infer(model, tensors, timeout)
        height, width = rgb.shape[:2]
        return model.decode(outputs, state, (width, height))

    async def _infer(
        self, model: DetectionModel, tensors: Mapping[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        inputs = []
        for name, (datatype, _) in model.inputs.items():
            tensor = tensors[name]
            infer_input = triton_grpc.InferInput(name, list(tensor.shape), datatype)
            infer_input.set_data_from_numpy(tensor)
            inputs.append(infer_input)
        requested = [triton_grpc.InferRequestedOutput(name) for name in model.outputs]
        started = time.perf_counter()
        try:
            result = await self._infer_call(model.name, inputs, requested, timeout)
        except InferenceServerException as error:
            raise to_inference_error(error, model.name) from error
        elapsed = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(model.name, elapsed)
        outputs: dict[str, Any] = {}
        try:
            for name in model.outputs:
                outputs[name] = result.as_numpy(name)
        except ValueError as error:  # fewer bytes than the shape says
            raise InferenceError("TRITON_BAD_RESPONSE", f"{model.name}: {error}") from error
        # One row of outputs per row of inputs (a batch of tiles, else 1).
        rows = int(tensors[next(iter(model.inputs))].shape[0])
        expected = {name: [rows, *dims] for name, (_, dims) in model.outputs.items()}
        got = {name: None if v is None else list(v.shape) for name, v in outputs.items()}
        if any(
            got[name] is None
            or len(got[name]) != len(want)
            or any(w != -1 and g != w for g, w in zip(got[name], want, strict=True))
            for name, want in expected.items()
        ):
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{model.name}: outputs {got}, expected {expected}"
            )
        return outputs

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
        self.breaker.readiness(problem is None)
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
                self._max_batch.pop(model.name, None)
                return f"{model.name}: contract mismatch: " + "; ".join(problems)
            self._max_batch[model.name] = int(config.get("max_batch_size", 0))
        return None

    async def __aenter__(self) -> Detector:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


# The name the service has always imported.
FaceDetector = Detector


async def _gather_all(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every call's result, run concurrently; when one fails (or we are cancelled), the others
    are cancelled and waited for before the error goes on."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _tile_batches(
    model: DetectionModel, tensors: Sequence[Mapping[str, np.ndarray]], max_batch: int
) -> list[list[int]]:
    """The tiles' requests: lists of indexes into ``tensors`` (each tile's inputs, a batch of
    one in front), in order, of at most ``max_batch`` tiles whose inputs have one shape and
    dtype each; a tile whose inputs are not a batch of one goes alone."""
    if max_batch < 2:
        return [[i] for i in range(len(tensors))]
    alike: dict[Any, list[int]] = {}
    batches: list[list[int]] = []
    for index, inputs in enumerate(tensors):
        shapes = tuple((name, inputs[name].shape, inputs[name].dtype) for name in model.inputs)
        if any(shape[:1] != (1,) for _, shape, _ in shapes):
            batches.append([index])
        else:
            alike.setdefault(shapes, []).append(index)
    for indexes in alike.values():
        batches += [indexes[i : i + max_batch] for i in range(0, len(indexes), max_batch)]
    batches.sort(key=lambda batch: batch[0])
    return batches


def _tile_model(
    models: Sequence[DetectionModel],
    nms_threshold: float,
    measured_threshold: float = face_refine.TILE_SCORE_THRESHOLD,
) -> DetectionModel | None:
    """The full-range model as the tiled pass (or the face hints) runs it: its own weighted
    NMS and clipping per tile (no NMS group), and the threshold face_refine measured for it
    (``measured_threshold``: TILE_SCORE_THRESHOLD, 0.6, or HINT_SCORE_THRESHOLD, 0.5), moved
    with the full-range model's own threshold (measured at its default, 0.5)."""
    full = next((m for m in models if m.name == TILE_MODEL), None)
    if not isinstance(full, MediaPipeDetector):
        return None
    extra = measured_threshold - face_refine.MODEL_SCORE_THRESHOLDS[TILE_MODEL]
    return MediaPipeDetector(
        full.name,
        full.spec,
        classes=full.classes,
        class_weights=full.class_weights,
        score_threshold=min(1.0, full.score_threshold + extra),
        nms_threshold=nms_threshold,
    )


def _detections(class_name: str, boxes: np.ndarray, scores: np.ndarray, model: str):
    """``(N, 4)`` xyxy boxes and their scores as Detections (empty boxes dropped)."""
    return [
        Detection(class_name, float(s), float(x0), float(y0), float(x1 - x0), float(y1 - y0), model)
        for (x0, y0, x1, y1), s in zip(boxes, scores, strict=True)
        if x1 > x0 and y1 > y0
    ]


def suppress_face_groups(detections: Sequence[Detection]) -> list[Detection]:
    """``detections`` without the face boxes that wholly contain two better faces
    (`face_refine.suppress_group_boxes`); other classes untouched; best first."""
    faces = [d for d in detections if d.class_name == FACE]
    out = [d for d in detections if d.class_name != FACE]
    if faces:
        boxes = np.array([[d.left, d.top, d.right, d.bottom] for d in faces], np.float64)
        scores = np.array([d.confidence for d in faces], np.float64)
        out += [faces[i] for i in face_refine.group_box_survivors(boxes, scores)]
    out.sort(key=lambda d: -d.confidence)
    return out


def merge_detections(
    per_model: Sequence[list[Detection]],
    iou_threshold: float,
    *,
    groups: Sequence[str | None] | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[Detection]:
    """One list, best first, from each model's detections (module docstring: merging).

    ``groups[i]`` is model ``i``'s NMS group (None: it did its own NMS). The candidates of a
    group go through one weighted NMS per class and are clipped to ``image_size``; then the
    detections of a class that several models or groups found go through one weighted NMS
    over their union. A class found by one model keeps that model's detections.
    """
    groups = list(groups) if groups is not None else [None] * len(per_model)
    sources: dict[str, list[Detection]] = {}  # a source: one model, or one NMS group
    for index, (detections, group) in enumerate(zip(per_model, groups, strict=True)):
        sources.setdefault(f"group:{group}" if group else f"model:{index}", []).extend(detections)
    by_class: dict[str, list[list[Detection]]] = {}
    for source, detections in sources.items():
        for class_name in dict.fromkeys(d.class_name for d in detections):
            found = [d for d in detections if d.class_name == class_name]
            if source.startswith("group:"):
                if image_size is None:
                    raise ValueError("an NMS group's candidates need the image size")
                found = _clipped(_weighted_merge(found, iou_threshold), *image_size)
            by_class.setdefault(class_name, []).append(found)
    merged: list[Detection] = []
    for parts in by_class.values():
        if len(parts) == 1:
            merged += parts[0]
        else:
            merged += _weighted_merge([d for part in parts for d in part], iou_threshold)
    merged.sort(key=lambda d: -d.confidence)
    return merged


def _weighted_merge(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """MediaPipe's weighted NMS (`inference.ssd.weighted_nms`, step by step the same) over
    detections of one class: box the score-weighted mean of each cluster, score and
    ``model`` those of its best."""
    # Stable, so ties keep their order, as in weighted_nms.
    pool = sorted(detections, key=lambda d: -d.confidence)
    boxes = np.array([[d.left, d.top, d.right, d.bottom] for d in pool], np.float64).reshape(-1, 4)
    scores = np.array([d.confidence for d in pool], np.float64)
    out = []
    while pool:
        similar = iou(boxes[0], boxes) > iou_threshold
        similar[0] = True
        weights = scores[similar]
        left, top, right, bottom = (boxes[similar] * weights[:, None]).sum(axis=0) / weights.sum()
        best = pool[0]
        out.append(
            Detection(
                best.class_name,
                best.confidence,
                float(left),
                float(top),
                float(right - left),
                float(bottom - top),
                model=best.model,
            )
        )
        keep = ~similar
        pool = [d for d, kept in zip(pool, keep, strict=True) if kept]
        boxes, scores = boxes[keep], scores[keep]
    return out


def _clipped(detections: list[Detection], width: int, height: int) -> list[Detection]:
    """``detections`` clipped to the image; those left empty are dropped."""
    if not detections:
        return []
    boxes = np.array([[d.left, d.top, d.right, d.bottom] for d in detections], np.float64)
    out = []
    for d, (left, top, right, bottom) in zip(
        detections, clip_boxes(boxes, width, height), strict=True
    ):
        if right > left and bottom > top:
            out.append(
                Detection(
                    d.class_name,
                    d.confidence,
                    float(left),
                    float(top),
                    float(right - left),
                    float(bottom - top),
                    model=d.model,
                )
            )
    return out
