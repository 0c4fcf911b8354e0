"""inference.breaker.CircuitBreaker: the Triton clients' circuit breaker, on a fake clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from inference import breaker as breaker_module
from inference.breaker import CircuitBreaker
from inference.client import Detector
from inference.errors import InferenceError, InferenceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The breaker's clock only (asyncio keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(breaker_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Calls:
    """Fake Triton calls: each ``call(...)`` is a coroutine; ``awaited`` counts those run."""

    def __init__(self) -> None:
        self.awaited = 0

    async def ok(self, value="ok"):
        self.awaited += 1
        return value

    async def down(self, reason="TRITON_UNAVAILABLE"):
        self.awaited += 1
        raise InferenceUnavailable(reason, "down")

    async def rejected(self):
        self.awaited += 1
        raise InferenceError("TRITON_INVALID_ARGUMENT", "bad request")


async def _open_fast(breaker: CircuitBreaker, calls: Calls) -> None:
    """One call fails fast without being run."""
    before = calls.awaited
    with pytest.raises(InferenceUnavailable) as caught:
        await breaker.guarded(calls.ok())
    assert caught.value.reason == "TRITON_CIRCUIT_OPEN"
    assert calls.awaited == before


async def test_closed_breaker_passes_results_and_errors_through(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    assert not breaker.is_open and not breaker.fails_fast
    assert await breaker.guarded(calls.ok(42)) == 42
    with pytest.raises(InferenceError) as caught:
        await breaker.guarded(calls.rejected())
    assert caught.value.reason == "TRITON_INVALID_ARGUMENT"
    assert not breaker.is_open  # Triton answered: a bad request is not an outage


async def test_unavailable_opens_it_then_calls_fail_fast_unawaited(clock, recwarn):
    breaker, calls = CircuitBreaker(2.0), Calls()
    with pytest.raises(InferenceUnavailable) as caught:
        await breaker.guarded(calls.down())
    assert caught.value.reason == "TRITON_UNAVAILABLE"
    assert breaker.is_open and breaker.fails_fast
    clock.now += 1.9
    await _open_fast(breaker, calls)
    # The refused coroutine was closed, not left to warn "never awaited".
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
    assert "open" in repr(breaker)


async def test_after_retry_after_one_probe_goes_through_and_success_closes(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down())
    clock.now += 2.0
    assert not breaker.fails_fast and breaker.is_open  # half-open
    assert await breaker.guarded(calls.ok()) == "ok"
    assert not breaker.is_open
    assert await breaker.guarded(calls.ok()) == "ok"


async def test_a_probe_in_flight_makes_the_others_wait(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down())
    clock.now += 2.5
    gate = asyncio.Event()

    async def slow():
        await gate.wait()
        return "probed"

    probe = asyncio.ensure_future(breaker.guarded(slow()))
    await asyncio.sleep(0)  # the probe is in flight
    await _open_fast(breaker, calls)
    gate.set()
    assert await probe == "probed"
    assert not breaker.is_open


async def test_a_failed_probe_opens_it_again_for_a_full_wait(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down())
    clock.now += 3.0
    with pytest.raises(InferenceUnavailable) as caught:
        await breaker.guarded(calls.down("TRITON_TIMEOUT"))
    assert caught.value.reason == "TRITON_TIMEOUT"
    clock.now += 1.9
    await _open_fast(breaker, calls)
    clock.now += 0.1
    assert await breaker.guarded(calls.ok()) == "ok"


async def test_a_rejected_probe_leaves_it_open(clock):
    """As the detector always did: the probe's half-open mark stays when Triton rejects it."""
    breaker, calls = CircuitBreaker(2.0), Calls()
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down())
    clock.now += 2.0
    with pytest.raises(InferenceError):
        await breaker.guarded(calls.rejected())
    assert breaker.is_open
    await _open_fast(breaker, calls)


async def test_trip_on_limits_the_reasons_that_open_it(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    only_server = {"TRITON_UNAVAILABLE", "TRITON_TIMEOUT"}
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down("MODEL_NOT_READY"), trip_on=only_server)
    assert not breaker.is_open
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down("MODEL_NOT_READY"))  # no filter: any outage
    assert breaker.is_open
    breaker.reset()
    with pytest.raises(InferenceUnavailable):
        await breaker.guarded(calls.down("TRITON_TIMEOUT"), trip_on=only_server)
    assert breaker.fails_fast


async def test_zero_retry_after_never_fails_fast(clock):
    breaker, calls = CircuitBreaker(0), Calls()
    for _ in range(3):
        with pytest.raises(InferenceUnavailable) as caught:
            await breaker.guarded(calls.down())
        assert caught.value.reason == "TRITON_UNAVAILABLE"
    assert calls.awaited == 3


async def test_trip_reset_and_readiness(clock):
    breaker, calls = CircuitBreaker(2.0), Calls()
    breaker.trip()
    assert breaker.fails_fast
    breaker.reset()
    assert not breaker.is_open and "closed" in repr(breaker)
    breaker.readiness(False)  # a failed readiness check opens a closed breaker...
    assert breaker.fails_fast
    clock.now += 1.5
    breaker.readiness(False)  # ...but does not restart the wait of an open one
    clock.now += 0.5
    assert breaker.is_open and not breaker.fails_fast
    assert "half-open" in repr(breaker)
    breaker.readiness(True)  # a passing one closes it
    assert not breaker.is_open
    breaker.trip()
    clock.now += 1.0
    breaker.trip()  # trip restarts the wait
    clock.now += 1.5
    await _open_fast(breaker, calls)


def test_a_detector_owns_a_breaker_or_shares_one():
    own = Detector("127.0.0.1:1", retry_after_s=7.0)
    assert isinstance(own.breaker, CircuitBreaker) and own.breaker.retry_after_s == 7.0
    assert own.retry_after_s == 7.0
    own.retry_after_s = 3.0
    assert own.breaker.retry_after_s == 3.0
    shared = CircuitBreaker(5.0)
    first = Detector("127.0.0.1:1", breaker=shared, retry_after_s=99.0)
    second = Detector("127.0.0.1:1", breaker=shared)
    assert first.breaker is second.breaker is shared
    assert first.retry_after_s == 5.0  # retry_after_s is the shared breaker's
