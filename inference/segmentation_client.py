"""The person-segmentation model through the Triton sidecar (issue 11): `PersonSegmenter`.

One ``segment`` is one Triton call on the model of `inference.segmentation` (MediaPipe selfie
segmentation): the image is stretched to the model's input (`inference.segmentation.preprocess`)
and the returned mask is mapped back to the image's size (`postprocess`).

Contract with the service (as `inference.client.Detector`'s and
`inference.autoquality_client.QualityPredictor`'s):

- One segmenter per process; its gRPC channel is made lazily inside the event loop of its
  first call; ``close()`` it on shutdown.
- Every call carries ``timeout_s``, which ``segment``'s own ``timeout_s`` can only shorten.
  Triton unreachable, a deadline passed, the model missing or not ready raise
  `InferenceUnavailable`; other Triton errors `InferenceError` ``TRITON_<STATUS>``; a mask of
  the wrong shape or not finite ``TRITON_BAD_RESPONSE``.
- The circuit breaker is the detector's when the same one is passed: Triton found down by
  either makes both fail fast. Only failures that say the *server* is down open it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from inference.breaker import CircuitBreaker
from inference.client import TritonModelClient, call_timeout, to_inference_error
from inference.errors import InferenceError, InferenceUnavailable
from inference.segmentation import SELFIE_SEGMENTATION, SegmentationModel, postprocess, preprocess

TRIPPING_REASONS = frozenset({"TRITON_UNAVAILABLE", "TRITON_TIMEOUT"})


class PersonSegmenter(TritonModelClient):
    """Person probability masks from the segmentation model over Triton.

    ``url``: Triton's gRPC ``host:port``; ``timeout_s``: every call's ``client_timeout``;
    ``breaker``: share the detector's (``Detector.breaker``); ``on_inference(model, seconds)``
    after each successful call; ``on_abandoned(model)`` for each call given up on (as the
    detector's)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        breaker: CircuitBreaker | None = None,
        retry_after_s: float = 2.0,
        on_inference: Callable[[str, float], None] | None = None,
        on_abandoned: Callable[[str], None] | None = None,
        model: SegmentationModel = SELFIE_SEGMENTATION,
    ) -> None:
        self._connect_settings(url, timeout_s, breaker, retry_after_s, on_inference, on_abandoned)
        self.model = model

    @property
    def model_name(self) -> str:
        return self.model.name

    async def ready(self) -> bool:
        """Whether the server and the model are ready (never raises)."""
        try:
            client = self._grpc()
            return bool(
                await client.is_server_ready(client_timeout=self.timeout_s)
                and await client.is_model_ready(self.model.name, client_timeout=self.timeout_s)
            )
        except InferenceServerException:
            return False

    async def segment(self, rgb: np.ndarray, *, timeout_s: float | None = None) -> np.ndarray:
        """The person probability of every pixel of ``rgb`` (uint8 H x W x 3): float32 H x W
        in [0, 1]. Raises ValueError for a malformed image, and `InferenceUnavailable` /
        `InferenceError` as the module docstring says."""
        tensor, mapping = preprocess(rgb, self.model)
        timeout = call_timeout(self.timeout_s, timeout_s)
        mask = await self.breaker.guarded(self._infer(tensor, timeout), trip_on=TRIPPING_REASONS)
        return postprocess(mask, mapping, rgb.shape[1], rgb.shape[0])

    async def _infer(self, tensor: np.ndarray, timeout: float) -> np.ndarray:
        model = self.model
        try:
            infer_input = triton_grpc.InferInput(model.input_name, list(tensor.shape), "FP32")
            infer_input.set_data_from_numpy(tensor)
            requested = [triton_grpc.InferRequestedOutput(model.output_name)]
            started = time.perf_counter()
            result = await self._infer_call(model.name, [infer_input], requested, timeout)
        except InferenceServerException as error:
            raise to_inference_error(error, model.name) from error
        elapsed = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(model.name, elapsed)
        try:
            output = result.as_numpy(model.output_name)
        except ValueError as error:
            raise InferenceError("TRITON_BAD_RESPONSE", f"{model.name}: {error}") from error
        want = (1, model.input_height, model.input_width, 1)
        if output is None or output.shape != want:
            got = None if output is None else output.shape
            raise InferenceError(
                "TRITON_BAD_RESPONSE", f"{model.name}: output {got}, expected {want}"
            )
        if not np.all(np.isfinite(output)):
            raise InferenceError("TRITON_BAD_RESPONSE", f"{model.name}: the mask is not finite")
        return output

    def __repr__(self) -> str:
        return f"PersonSegmenter({self.url!r}, model={self.model.name!r})"


__all__ = ["InferenceUnavailable", "PersonSegmenter"]
