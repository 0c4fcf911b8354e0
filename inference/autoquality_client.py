"""The autoquality model through the Triton sidecar (issue 10): `QualityPredictor`.

The model (``model_repository/autoquality``, README of ``inference/training/autoquality/``)
reads one image's features (`inference.autoquality.features`, float32 [N_FEATURES]) and
predicts, for each format it knows, log(DSSIM) at every quality of a fixed grid. One
``predict`` is one Triton call; its `Prediction` turns a curve into a quality
(`Prediction.quality_for`) or into ``(quality, DSSIM)`` points for the encoder's search
(`Prediction.points`).

What the output means comes from the *served* model, not from files: the config's
``parameters`` ``formats`` (``"jpeg,webp,avif"``), ``grid`` (``"15,20,...,95"``),
``version`` (the model's name, which the service reports) and ``features_version`` (the
feature vector the model was trained on). The service's pod need not hold the model
repository. The predictor reads them in ``ready()`` (every call: the served model may change)
or, when ``ready()`` was never called, in the first ``predict``, and keeps them.

Contract with the service (as `inference.client.Detector`'s):

- One predictor per process; its gRPC channel is made lazily inside the event loop of its
  first call; ``close()`` it on shutdown. Worker threads call ``predict_blocking`` with that
  loop.
- Every Triton call carries ``timeout_s``, which ``predict``'s own ``timeout_s`` can only
  shorten. Triton unreachable, a deadline passed, the model missing or not ready raise
  `InferenceUnavailable` (``TRITON_UNAVAILABLE``, ``TRITON_TIMEOUT``, ``MODEL_NOT_READY``);
  other Triton errors `InferenceError` ``TRITON_<STATUS>``; an output of the wrong shape or
  not finite ``TRITON_BAD_RESPONSE``.
- A served model whose contract differs from this code's (tensor names, dtypes, dims, a
  ``features_version`` other than `inference.autoquality.FEATURES_VERSION`, dims that
  disagree with ``formats``/``grid``) makes ``ready()`` False with the reason and ``predict``
  raise `InferenceError` ``AUTOQUALITY_MODEL_MISMATCH``: it never predicts from features the
  model was not trained on.
- The circuit breaker (`inference.breaker.CircuitBreaker`) is the detector's when it is
  passed the same one: Triton found down by either makes both fail fast
  (``TRITON_CIRCUIT_OPEN``). Only failures that say the *server* is down
  (``TRITON_UNAVAILABLE``, ``TRITON_TIMEOUT``, a server that is not ready) open it: a missing
  or mismatched autoquality model must not stop face detection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from inference import autoquality
from inference.autoquality import FEATURES_VERSION, N_FEATURES, CurveSpec
from inference.breaker import CircuitBreaker
from inference.client import TritonModelClient, call_timeout, to_inference_error
from inference.errors import InferenceError, InferenceUnavailable

logger = logging.getLogger(__name__)

MODEL_NAME = "autoquality"
INPUT_NAME = "features"
OUTPUT_NAME = "log_dssim"
MISMATCH = "AUTOQUALITY_MODEL_MISMATCH"
# The failures that say Triton itself is down, not this model: they open the (shared) breaker.
TRIPPING_REASONS = frozenset({"TRITON_UNAVAILABLE", "TRITON_TIMEOUT"})
# predict_blocking waits this much longer than the call's timeout for the loop to answer.
BLOCKING_MARGIN_S = 0.25


# --- the served model's contract ---------------------------------------------------------------


def _parameter(config: Mapping[str, Any], key: str) -> str:
    value = (config.get("parameters") or {}).get(key)
    text = value.get("string_value") if isinstance(value, Mapping) else None
    if not text or not str(text).strip():
        raise ValueError(f"parameter {key!r} missing from the served config")
    return str(text).strip()


def served_spec(config: Mapping[str, Any]) -> CurveSpec:
    """The `CurveSpec` a served config describes: its ``formats``, ``grid``, ``version`` and
    ``features_version`` parameters. ``config`` is ``get_model_config(..., as_json=True)
    ["config"]``. ValueError names a parameter that is missing or malformed."""
    formats = tuple(f.strip() for f in _parameter(config, "formats").split(","))
    if not all(formats) or len(set(formats)) != len(formats):
        raise ValueError(f"parameter 'formats' {formats} is not a list of distinct names")
    try:
        grid = tuple(int(q) for q in _parameter(config, "grid").split(","))
    except ValueError:
        raise ValueError(
            f"parameter 'grid' {_parameter(config, 'grid')!r} is not a list of qualities"
        ) from None
    if len(grid) < 2 or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise ValueError(f"parameter 'grid' {grid} is not at least two increasing qualities")
    raw = _parameter(config, "features_version")
    try:
        features_version = int(raw)
    except ValueError:
        raise ValueError(f"parameter 'features_version' {raw!r} is not an integer") from None
    return CurveSpec(
        formats=formats,
        grid=grid,
        version=_parameter(config, "version"),
        features_version=features_version,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        log_errors=_log_errors(config, formats),
    )


def _log_errors(config: Mapping[str, Any], formats: tuple[str, ...]) -> dict[str, float]:
    """The optional ``log_dssim_error`` parameter: one deviation per format, in ``formats``'
    order (`CurveSpec.log_errors`); absent: none."""
    if "log_dssim_error" not in (config.get("parameters") or {}):
        return {}
    raw = _parameter(config, "log_dssim_error")
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        raise ValueError(f"parameter 'log_dssim_error' {raw!r} is not a list of numbers") from None
    if len(values) != len(formats) or not all(v >= 0 and np.isfinite(v) for v in values):
        raise ValueError(
            f"parameter 'log_dssim_error' {raw!r} needs one non-negative number per format"
        )
    return dict(zip(formats, values, strict=True))


def _config_tensors(config: Mapping[str, Any], kind: str) -> dict[str, tuple[str, list[int]]]:
    return {
        t["name"]: (
            t.get("data_type", "").removeprefix("TYPE_"),
            [int(d) for d in t.get("dims", [])],
        )
        for t in config.get(kind, [])
    }


def _metadata_tensors(tensors) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.datatype, [int(d) for d in t.shape]) for t in tensors}


def contract_problems(
    metadata, config: Mapping[str, Any], *, features_version: int = FEATURES_VERSION
) -> list[str]:
    """How the served autoquality model differs from what this client sends and reads.

    ``metadata`` is a ``ModelMetadataResponse``; ``config`` is ``get_model_config(...,
    as_json=True)["config"]``. Checked: a batch dimension (``max_batch_size >= 1``, metadata
    shapes ``[-1, ...]``), input ``features`` FP32 [N_FEATURES], output ``log_dssim`` FP32
    [formats, grid] in both, and the parameters (`served_spec`), ``features_version`` equal to
    ``features_version`` (this service's). Empty list: the contract holds.
    """
    problems: list[str] = []
    try:
        spec: CurveSpec | None = served_spec(config)
    except ValueError as error:
        spec = None
        problems.append(str(error))
    if spec is not None and spec.features_version != features_version:
        problems.append(
            f"features_version {spec.features_version} served, this service computes "
            f"{features_version}"
        )
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch < 1:
        problems.append(f"max_batch_size {max_batch} < 1: no batch dimension")
    out_dims = [len(spec.formats), len(spec.grid)] if spec is not None else [None, None]
    want = {
        "input": {INPUT_NAME: ("FP32", [N_FEATURES])},
        "output": {OUTPUT_NAME: ("FP32", out_dims)},
    }
    for kind, seen_meta, seen_config in (
        ("input", metadata.inputs, _config_tensors(config, "input")),
        ("output", metadata.outputs, _config_tensors(config, "output")),
    ):
        meta = _metadata_tensors(seen_meta)
        if kind == "input" and set(meta) != set(want[kind]):
            problems.append(f"inputs {sorted(meta)} != {sorted(want[kind])}")
        for name, (datatype, dims) in want[kind].items():
            for source, seen, expected in (
                ("metadata", meta, (datatype, [-1, *dims])),
                ("config", seen_config, (datatype, dims)),
            ):
                if name not in seen:
                    problems.append(f"{kind} {name!r} missing from {source}")
                elif not _matches(seen[name], expected):
                    problems.append(
                        f"{kind} {name!r} in {source} is {seen[name][0]} {seen[name][1]}, "
                        f"expected {expected[0]} {expected[1]}"
                        + (" (formats x grid)" if kind == "output" and spec is not None else "")
                    )
    return problems


def _matches(seen: tuple[str, list[int]], want: tuple[str, list[int | None]]) -> bool:
    """Same datatype and dims; None in ``want`` matches any size, -1 (a dynamic dimension,
    the batch) only -1."""
    return (
        seen[0] == want[0]
        and len(seen[1]) == len(want[1])
        and all(w is None or s == w for s, w in zip(seen[1], want[1], strict=True))
    )


# --- a prediction ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Prediction:
    """The model's curves for one image: ``curves[fmt][i]`` is the predicted log(DSSIM) of
    format ``fmt`` at quality ``grid[i]`` (float64, finite, read-only), from the served model
    ``version``."""

    version: str
    grid: tuple[int, ...]
    curves: Mapping[str, np.ndarray]
    # The served model's error per format (`CurveSpec.log_errors`); empty: not served.
    log_errors: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        curves = {}
        for fmt, curve in self.curves.items():
            array = np.array(curve, dtype=np.float64)
            if array.shape != (len(self.grid),):
                raise ValueError(f"{fmt}: curve of shape {array.shape}, grid of {len(self.grid)}")
            array.setflags(write=False)
            curves[fmt] = array
        object.__setattr__(self, "grid", tuple(int(q) for q in self.grid))
        object.__setattr__(self, "curves", MappingProxyType(curves))

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.curves)

    def curve(self, fmt: str) -> np.ndarray:
        """``fmt``'s log(DSSIM) curve over ``grid``. KeyError for a format not predicted."""
        try:
            return self.curves[fmt]
        except KeyError:
            raise KeyError(
                f"format {fmt!r} is not predicted by autoquality {self.version} "
                f"(it predicts {', '.join(self.curves)})"
            ) from None

    def quality_for(self, fmt: str, target: float, low: int = 1, high: int = 100) -> int:
        """The integer quality at which ``fmt`` is predicted to reach DSSIM ``target``, in
        [low, high] (`inference.autoquality.predicted_quality`)."""
        return autoquality.predicted_quality(self.grid, self.curve(fmt), target, low, high)

    def points(self, fmt: str) -> list[tuple[float, float]]:
        """``fmt``'s monotone curve as ``(quality, DSSIM)`` points
        (`inference.autoquality.curve_points`)."""
        return autoquality.curve_points(self.grid, self.curve(fmt))


def _checked_features(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features)
    if array.shape != (N_FEATURES,):
        raise ValueError(f"expected features of shape ({N_FEATURES},), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"expected float32 features, got {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("features must be finite")
    return array


# --- the client ------------------------------------------------------------------------------


class QualityPredictor(TritonModelClient):
    """Predicted quality -> DSSIM curves of an image, from the autoquality model over Triton.

    Parameters
    ----------
    url
        Triton's gRPC ``host:port``, e.g. ``"127.0.0.1:8001"``.
    timeout_s
        ``client_timeout`` of every Triton call; ``predict`` can only shorten it.
    breaker
        The `CircuitBreaker` to use: pass the detector's (``Detector.breaker``) to share it.
        Default: one of its own with ``retry_after_s``.
    retry_after_s
        Its own breaker's wait (ignored when ``breaker`` is given).
    on_inference
        ``on_inference(model_name, seconds)`` after each successful inference.
    model_name
        The Triton model.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        breaker: CircuitBreaker | None = None,
        retry_after_s: float = 2.0,
        on_inference: Callable[[str, float], None] | None = None,
        on_abandoned: Callable[[str], None] | None = None,
        model_name: str = MODEL_NAME,
    ) -> None:
        self._connect_settings(url, timeout_s, breaker, retry_after_s, on_inference, on_abandoned)
        self.model_name = model_name
        self._spec: CurveSpec | None = None  # the served contract, once read and matching
        self._mismatch: str | None = None  # why the served model does not match, once read
        self._not_ready_reason: str | None = None
        self._checked = False

    # -- what is served -------------------------------------------------------------------

    @property
    def spec(self) -> CurveSpec | None:
        """The served model's `CurveSpec`; None until read (``ready()`` or ``predict``) or
        while the served model does not match."""
        return self._spec

    @property
    def formats(self) -> tuple[str, ...] | None:
        return None if self._spec is None else self._spec.formats

    @property
    def version(self) -> str | None:
        return None if self._spec is None else self._spec.version

    @property
    def not_ready_reason(self) -> str | None:
        """Why the last ``ready()`` was False; None after a passing one, or before any."""
        return self._not_ready_reason

    def _learn(self, metadata, config: Mapping[str, Any]) -> str | None:
        """Record the served contract: its spec, or why it does not match (returned)."""
        problems = contract_problems(metadata, config)
        if problems:
            self._spec = None
            self._mismatch = f"{self.model_name}: contract mismatch: " + "; ".join(problems)
            return self._mismatch
        self._spec = served_spec(config)
        self._mismatch = None
        return None

    async def _read_contract(self, timeout_of: Callable[[], float]) -> str | None:
        client = self._grpc()
        metadata = await client.get_model_metadata(self.model_name, client_timeout=timeout_of())
        config = (
            await client.get_model_config(
                self.model_name, as_json=True, client_timeout=timeout_of()
            )
        )["config"]
        return self._learn(metadata, config)

    # -- readiness -------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Server ready, the model ready, and its contract this code's (module docstring).
        Reads the served spec again (``formats``, ``version`` follow the served model).

        A passing check closes the breaker; a server that is down or not ready opens it
        (unless open); a model that is missing or mismatched leaves it alone."""
        server_down = False
        try:
            problem, server_down = await self._readiness_problem()
        except InferenceServerException as error:
            failure = to_inference_error(error, self.model_name)
            problem = str(failure)
            server_down = (
                isinstance(failure, InferenceUnavailable) and failure.reason in TRIPPING_REASONS
            )
        if problem != self._not_ready_reason or not self._checked:
            if problem is None:
                logger.info(
                    "autoquality model %s at %s ready: %s",
                    self.version,
                    self.url,
                    ", ".join(self.formats or ()),
                )
            else:
                logger.warning("autoquality model at %s not ready: %s", self.url, problem)
            self._not_ready_reason = problem
            self._checked = True
        if problem is None:
            self.breaker.readiness(True)
        elif server_down:
            self.breaker.readiness(False)
        return problem is None

    async def _readiness_problem(self) -> tuple[str | None, bool]:
        """(the problem or None, whether it is the server's)."""
        client = self._grpc()
        timeout = self.timeout_s
        if not await client.is_server_ready(client_timeout=timeout):
            return "server not ready", True
        if not await client.is_model_ready(self.model_name, client_timeout=timeout):
            return f"{self.model_name}: model not ready", False
        return await self._read_contract(lambda: timeout), False

    # -- prediction ------------------------------------------------------------------------

    async def predict(self, features: np.ndarray, *, timeout_s: float | None = None) -> Prediction:
        """The curves the model predicts for one image's ``features`` (float32 [N_FEATURES],
        `inference.autoquality.features`).

        One Triton call behind the breaker (preceded, the first time when ``ready()`` never
        ran, by reading the served contract; all within the timeout). ``timeout_s`` caps the
        instance's ``timeout_s``. Raises ValueError for features of the wrong shape or not
        finite, `InferenceError` ``AUTOQUALITY_MODEL_MISMATCH`` when the served model is not
        this code's, and `InferenceUnavailable` / `InferenceError` as the module docstring
        says.
        """
        vector = _checked_features(features)
        if self._mismatch is not None:
            raise InferenceError(MISMATCH, self._mismatch)
        timeout = call_timeout(self.timeout_s, timeout_s)
        return await self.breaker.guarded(
            self._predict(vector, timeout, callers_deadline=timeout < self.timeout_s),
            trip_on=TRIPPING_REASONS,
        )

    async def _predict(
        self, vector: np.ndarray, timeout: float, *, callers_deadline: bool
    ) -> Prediction:
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InferenceUnavailable("TRITON_TIMEOUT", f"{self.model_name}: deadline passed")
            return left

        try:
            if self._spec is None:
                mismatch = await self._read_contract(remaining)
                if mismatch is not None:
                    raise InferenceError(MISMATCH, mismatch)
            spec = self._spec
            assert spec is not None
            infer_input = triton_grpc.InferInput(spec.input_name, [1, N_FEATURES], "FP32")
            infer_input.set_data_from_numpy(vector[None])
            requested = [triton_grpc.InferRequestedOutput(spec.output_name)]
            started = time.perf_counter()
            result = await self._infer_call(
                self.model_name,
                [infer_input],
                requested,
                remaining(),
                callers_deadline=callers_deadline,
            )
        except InferenceServerException as error:
            raise to_inference_error(error, self.model_name) from error
        elapsed = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(self.model_name, elapsed)
        try:
            output = result.as_numpy(spec.output_name)
        except ValueError as error:  # fewer bytes than the shape says
            raise InferenceError("TRITON_BAD_RESPONSE", f"{self.model_name}: {error}") from error
        want = (1, len(spec.formats), len(spec.grid))
        if output is None or output.shape != want:
            got = None if output is None else output.shape
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{self.model_name}: output {got}, expected {want}"
            )
        if not np.all(np.isfinite(output)):
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{self.model_name}: the predicted curves are not finite"
            )
        return Prediction(
            version=spec.version,
            grid=spec.grid,
            curves={fmt: output[0, i] for i, fmt in enumerate(spec.formats)},
            log_errors=dict(spec.log_errors),
        )

    def predict_blocking(
        self,
        loop: asyncio.AbstractEventLoop,
        features: np.ndarray,
        timeout_s: float | None = None,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> Prediction:
        """``predict`` from a worker thread: runs it on ``loop`` (the running event loop that
        owns this predictor's channel) and waits for it, at most its timeout (``timeout_s``
        capped by the instance's) plus BLOCKING_MARGIN_S from the call's start; past that the
        call is cancelled and `InferenceUnavailable` ``TRITON_TIMEOUT`` raised. Raises what
        ``predict`` raises.

        ``meanwhile`` (optional) runs on this thread while the call is in flight (work the
        caller needs anyway, done during the round trip instead of after it); what it raises
        cancels the call and propagates.

        Must not be called on ``loop``'s own thread (it would wait on itself): that raises
        RuntimeError. A loop that is closed or not running raises `InferenceUnavailable`
        ``TRITON_UNAVAILABLE`` (e.g. a worker still encoding at shutdown).
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                "predict_blocking was called on its event loop's thread; await predict() there"
            )
        vector = _checked_features(features)
        timeout = call_timeout(self.timeout_s, timeout_s)
        if loop.is_closed() or not loop.is_running():
            raise InferenceUnavailable(
                "TRITON_UNAVAILABLE", "the event loop that calls Triton is not running"
            )
        started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(self.predict(vector, timeout_s=timeout), loop)
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                future.cancel()
                raise
        try:
            waited = time.monotonic() - started
            return future.result(timeout=max(timeout + BLOCKING_MARGIN_S - waited, 0.0))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise InferenceUnavailable(
                "TRITON_TIMEOUT",
                f"{self.model_name}: no answer within {timeout + BLOCKING_MARGIN_S:.3g} s",
            ) from None
        except concurrent.futures.CancelledError:
            raise InferenceUnavailable(
                "TRITON_UNAVAILABLE", f"{self.model_name}: the call was cancelled"
            ) from None

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> QualityPredictor:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"QualityPredictor({self.url!r}, model={self.model_name!r}, version={self.version})"


__all__ = [
    "MISMATCH",
    "MODEL_NAME",
    "Prediction",
    "QualityPredictor",
    "contract_problems",
    "served_spec",
]
