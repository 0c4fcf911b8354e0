"""Errors the inference client raises; the service maps them to gRPC statuses."""

from __future__ import annotations


class InferenceError(Exception):
    """Inference failed. ``reason`` is an UPPER_SNAKE code for ``ErrorInfo.reason``.

    Raised as such (not as `InferenceUnavailable`) when Triton rejected the request
    (e.g. ``TRITON_INVALID_ARGUMENT``, ``TRITON_INTERNAL``): that is a bug or a model
    contract mismatch on our side, and retrying will not help.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.args[0]}"


class InferenceUnavailable(InferenceError):
    """Triton cannot serve now; retrying later may succeed.

    ``reason`` is one of ``TRITON_UNAVAILABLE`` (not reachable), ``TRITON_TIMEOUT`` (the
    call's deadline passed) or ``MODEL_NOT_READY`` (model missing, loading or unloaded).
    """


class CallerDeadlinePassed(InferenceUnavailable):
    """``TRITON_TIMEOUT`` because the caller's own deadline (shorter than the client's
    timeout) ran out while Triton was still working: says nothing of Triton's health, so the
    circuit breaker does not open on it (one caller in a hurry must not switch detection off
    for everyone)."""

    def __init__(self, message: str) -> None:
        super().__init__("TRITON_TIMEOUT", message)
