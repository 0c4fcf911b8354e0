"""The circuit breaker in front of the Triton sidecar, shared by its clients.

After Triton was found unavailable (a call raised `InferenceUnavailable`, or a readiness
check failed), calls fail at once with ``TRITON_CIRCUIT_OPEN`` for ``retry_after_s``; then
one call goes through to probe (half-open: the calls behind it keep failing fast for another
``retry_after_s``), and a success or a passing readiness check closes the breaker. A slow or
dead sidecar then costs callers nothing instead of a timeout each.

One breaker may guard several clients of the same sidecar (`inference.client.Detector` and
`inference.autoquality_client.QualityPredictor` take a ``breaker``): a failure seen by one
makes the others fail fast too. ``retry_after_s`` 0 disables failing fast (every call goes
to Triton).

Not thread-safe: use it from the event loop that runs the clients' calls.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

from inference.errors import CallerDeadlinePassed, InferenceUnavailable

T = TypeVar("T")

CIRCUIT_OPEN = "TRITON_CIRCUIT_OPEN"


class CircuitBreaker:
    """Fail fast for ``retry_after_s`` seconds after Triton was found unavailable."""

    def __init__(self, retry_after_s: float = 2.0) -> None:
        self.retry_after_s = retry_after_s
        self._opened: float | None = None  # time.monotonic() when it last opened

    @property
    def is_open(self) -> bool:
        """Not closed: a failure was seen and no success since (calls fail fast, or one of
        them probes)."""
        return self._opened is not None

    @property
    def fails_fast(self) -> bool:
        """Whether a call made now would fail with ``TRITON_CIRCUIT_OPEN``."""
        return self._opened is not None and time.monotonic() - self._opened < self.retry_after_s

    def trip(self) -> None:
        """Open it now (the wait of ``retry_after_s`` starts again if it was open)."""
        self._opened = time.monotonic()

    def reset(self) -> None:
        """Close it: Triton answered."""
        self._opened = None

    def readiness(self, ready: bool) -> None:
        """Record a readiness check: a pass closes the breaker, a failure opens it unless it
        is already open (its wait is not restarted)."""
        if ready:
            self._opened = None
        elif self._opened is None:
            self._opened = time.monotonic()

    async def guarded(
        self, calls: Coroutine[Any, Any, T], *, trip_on: Collection[str] | None = None
    ) -> T:
        """Await ``calls`` (Triton requests) behind the breaker.

        While open, ``calls`` is closed unawaited and `InferenceUnavailable`
        (``TRITON_CIRCUIT_OPEN``) is raised. An `InferenceUnavailable` from ``calls`` opens
        the breaker (only one whose ``reason`` is in ``trip_on``, when given: a client whose
        one model is missing should not stop the others; never `CallerDeadlinePassed`); a
        result closes it. Other errors leave it as it is.
        """
        if self._opened is not None:
            if time.monotonic() - self._opened < self.retry_after_s:
                calls.close()
                raise InferenceUnavailable(
                    CIRCUIT_OPEN, "Triton was unavailable moments ago; not calling it"
                )
            self._opened = time.monotonic()  # half-open: this call probes, others wait
        try:
            result = await calls
        except InferenceUnavailable as error:
            if isinstance(error, CallerDeadlinePassed):
                raise  # the caller's hurry, not Triton's health; leaves the breaker as it is
            if trip_on is None or error.reason in trip_on:
                self._opened = time.monotonic()
            raise
        self._opened = None
        return result

    def __repr__(self) -> str:
        state = "closed" if self._opened is None else ("open" if self.fails_fast else "half-open")
        return f"CircuitBreaker(retry_after_s={self.retry_after_s}, {state})"
