"""The ML autoquality method's side of the encoder (README "Autoquality by ML").

The encoder asks a ``QualityPredictor`` once per result image for the predicted quality ->
DSSIM curve of every format it may encode (best format: all candidates in one call), then
inverts the curve for the request's aim and checks the guess with one encode and one DSSIM
measure; a miss is corrected along the same curve, shifted through what was measured (the
search's first step with a prior: ``search.search_quality``), not searched from scratch.

A predictor that cannot answer raises ``PredictionUnavailable``; the encoder then searches by
DSSIM and reports the reason as a degradation. ``TritonQualityPredictor`` is the service's:
features computed here, on the worker thread (``inference.autoquality.features``, a few ms at
720 px), one Triton call made on the event loop (``inference.autoquality_client``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyvips

from imagesvc.encoding.search import QualityCurve

# Degradation reasons (the response's ``degradations`` and the degradation metric).
AUTOQUALITY_ML_UNAVAILABLE = "AUTOQUALITY_ML_UNAVAILABLE"


class PredictionUnavailable(Exception):
    """The predictor has no answer for this image: ``reason`` names why (Triton's reason, e.g.
    TRITON_CIRCUIT_OPEN, or AUTOQUALITY_NO_MODEL for a format without a model)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class QualityPrediction:
    """Predicted DSSIM against quality per format, from one model (``version``)."""

    version: str
    curves: Mapping[str, QualityCurve]
    # Per format, the deviation of the curve's log(DSSIM) error on unseen pictures (the
    # served model's ``log_dssim_error``); a format without one: unknown.
    log_errors: Mapping[str, float] = field(default_factory=dict)

    def log_error(self, fmt: str) -> float:
        """``fmt``'s error deviation; 0 when unknown."""
        return float(self.log_errors.get(fmt, 0.0))

    def curve(self, fmt: str) -> QualityCurve:
        """The format's curve; ``PredictionUnavailable`` when the model has none."""
        try:
            return self.curves[fmt]
        except KeyError:
            raise PredictionUnavailable(
                "AUTOQUALITY_NO_MODEL",
                f"the quality model {self.version} has no curve for {fmt}",
            ) from None

    def quality_for(self, fmt: str, target: float, low: int, high: int) -> int:
        """The lowest integer quality in [low, high] whose predicted DSSIM <= ``target``."""
        curve = self.curve(fmt)
        found = curve.quality_for(target)
        if found is None:
            # The curve never crosses the target (e.g. flat at a DSSIM far under it, as the
            # model predicts for a flat graphic): met from the low end on, or nowhere.
            found = float(low if curve.value_at(low) <= target else high)
        return int(min(max(round(found), low), high))


class QualityPredictor(Protocol):
    def predict(
        self,
        image: pyvips.Image,
        formats: Sequence[str],
        meanwhile: Callable[[], object] | None = None,
    ) -> QualityPrediction:
        """Curves for ``formats`` of ``image`` (8-bit sRGB/grey, at output size, alpha allowed:
        what the encoder encodes), or ``PredictionUnavailable``. Called from a worker thread.
        ``meanwhile``: work of the caller's, run on that thread while the answer is awaited
        (what it raises propagates). It may not run at all when the predictor gives up before
        asking (no features, no time left): the caller must not count on it having run."""
        ...


class _Client(Protocol):
    """What ``TritonQualityPredictor`` needs of ``inference.autoquality_client.QualityPredictor``."""

    timeout_s: float

    def predict_blocking(
        self,
        loop: asyncio.AbstractEventLoop,
        features,
        timeout_s: float,
        *,
        meanwhile: Callable[[], object] | None = None,
    ): ...


class TritonQualityPredictor:
    """A ``QualityPredictor`` for one request: features on the calling (worker) thread, the
    Triton call on ``loop`` through the client (its circuit breaker, its timeout), bounded by
    the time the request has left (``deadline``, ``time.monotonic()``). ``on_prediction``
    (metrics) hears (version, seconds) of each answered call: the seconds the request waited
    for it, the caller's ``meanwhile`` work left out."""

    def __init__(
        self,
        client: _Client,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        *,
        features: Callable[[pyvips.Image], object] | None = None,
        on_prediction: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
        self._loop = loop
        self._deadline = deadline
        self._features = features
        self._on_prediction = on_prediction

    def predict(
        self,
        image: pyvips.Image,
        formats: Sequence[str],
        meanwhile: Callable[[], object] | None = None,
    ) -> QualityPrediction:
        from inference import autoquality
        from inference.errors import InferenceError, InferenceUnavailable

        try:
            features = (self._features or autoquality.features)(image)
        except ValueError as error:  # e.g. under 16x16 px: nothing for the model to read
            raise PredictionUnavailable(
                "AUTOQUALITY_IMAGE_UNSUPPORTED", f"the quality model cannot read it: {error}"
            ) from error
        timeout = min(self._client.timeout_s, self._deadline - time.monotonic())
        if timeout <= 0:
            raise PredictionUnavailable("TRITON_TIMEOUT", "no time left to ask the quality model")
        overlapped = 0.0

        def timed_meanwhile() -> None:
            nonlocal overlapped
            begun = time.perf_counter()
            try:
                meanwhile()
            finally:
                overlapped = time.perf_counter() - begun

        started = time.perf_counter()
        try:
            prediction = self._client.predict_blocking(
                self._loop,
                features,
                timeout,
                meanwhile=timed_meanwhile if meanwhile is not None else None,
            )
        except (InferenceUnavailable, InferenceError) as error:
            reason = getattr(error, "reason", "TRITON_UNAVAILABLE")
            raise PredictionUnavailable(
                reason, f"the quality model did not answer: {error}"
            ) from error
        if self._on_prediction is not None:
            # The wait the call added: its round trip less the work done meanwhile.
            self._on_prediction(prediction.version, time.perf_counter() - started - overlapped)
        curves = {}
        for fmt in formats:
            if fmt in prediction.curves:
                curves[fmt] = QualityCurve.from_points(prediction.points(fmt))
        log_errors = getattr(prediction, "log_errors", None) or {}
        return QualityPrediction(
            prediction.version,
            curves,
            {fmt: float(log_errors[fmt]) for fmt in curves if fmt in log_errors},
        )
