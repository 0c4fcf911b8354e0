"""The process's policy for glibc malloc, which Python, grpc and libvips all allocate through.

Arenas (``IMAGESVC_MALLOC_ARENA_MAX``, 1 by default). glibc gives threads their own malloc
arenas, up to 8 per CPU, and each arena keeps the blocks freed in it for its own threads. The
service's threads (event loop, gRPC pollers, image workers, libvips' threads) each handle
request-sized buffers, so every arena grows to hold some, and peak and idle RSS grow with the
number of arenas rather than with the work. ``limit_arenas`` caps them with
``mallopt(M_ARENA_MAX)`` at start, before those threads exist, as ``MALLOC_ARENA_MAX`` would
(imgproxy's image sets 2). One arena cut the server's peak RSS by 30-39 MB and its idle RSS by
25-30 MB at the same throughput; two arenas kept 6-8 MB more (bench/README.md, "Memory").

Thresholds (``IMAGESVC_MALLOC_TUNING``, on by default). With glibc's defaults, a block over the
mmap threshold is mapped fresh and unmapped on free, and a heap whose free top exceeds the trim
threshold is shrunk, so a request can fault its buffers back in page by page (zero-filled by
the kernel). A bare grpc.aio server receiving a 1.16 MB request used 4.7 ms of CPU per request
with the defaults and 1.5 ms with the fixed thresholds below (bench/grpc_transport.py). In the
whole service they save 0-4 % of the server's CPU per image (most on small images), and with one
arena they add no measurable peak or idle RSS.

A periodic ``malloc_trim(0)``, as imgproxy does every 10 s, hands back what an idle process holds.
glibc's own environment variables (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ... and
``GLIBC_TUNABLES=glibc.malloc.*``) win over both settings.

This module imports nothing heavy (not even structlog or asyncio at import time):
bench/throughput.py applies the same policy to its floor, which must stay a pyvips-only process.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio


def _log() -> Any:
    # structlog (which imports asyncio) only when there is something to say: the floor of
    # bench/throughput.py imports this module and should stay a pyvips-only process.
    import structlog

    return structlog.get_logger("imagesvc.memory")


# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# The service's defaults (IMAGESVC_MALLOC_ARENA_MAX, IMAGESVC_MALLOC_TUNING): a cap on malloc
# arenas (0 leaves glibc's own), and whether to fix the thresholds below.
DEFAULT_ARENA_MAX = 1
DEFAULT_THRESHOLDS = True

# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit builds.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
TOP_PAD_BYTES = 16 * 1024 * 1024

# The same knobs set by the operator through glibc's environment variables win over ours.
GLIBC_ENV_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC_TUNABLE_KNOBS = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
GLIBC_TUNABLE_KNOBS += ("glibc.malloc.top_pad",)
ARENA_ENV_KNOB = "MALLOC_ARENA_MAX"
ARENA_TUNABLE_KNOB = "glibc.malloc.arena_max"


def _set_in_environment(
    environ: Mapping[str, str], variables: tuple[str, ...], tunables: tuple[str, ...]
) -> list[str]:
    """Which of glibc's variables (or ``GLIBC_TUNABLES`` entries) for these knobs are set."""
    found = [name for name in variables if name in environ]
    given = environ.get("GLIBC_TUNABLES", "")
    names = {item.split("=", 1)[0].strip() for item in given.replace(":", " ").split()}
    found += [f"GLIBC_TUNABLES={name}" for name in tunables if name in names]
    return found


@functools.cache
def glibc() -> Any | None:
    """The process's C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no dynamic C library at all
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


def _mallopt(
    what: str,
    settings: tuple[tuple[int, int], ...],
    env_knobs: tuple[str, ...],
    tunables: tuple[str, ...],
    libc: Any | None,
    environ: Mapping[str, str] | None,
) -> bool:
    """Apply ``settings`` (mallopt parameter, value) unless the operator set the same knobs in
    the environment (glibc applied those already) or the C library is not glibc."""
    environ = os.environ if environ is None else environ
    overridden = _set_in_environment(environ, env_knobs, tunables)
    if overridden:
        _log().info(f"{what}_skipped", reason="set in the environment", variables=overridden)
        return False
    libc = glibc() if libc is None else libc
    if libc is None:
        _log().info(f"{what}_skipped", reason="not glibc")
        return False
    for param, value in settings:
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            _log().warning("mallopt_refused", param=param, value=value)
            return False
    return True


def limit_arenas(
    arena_max: int, libc: Any | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Cap glibc's malloc arenas at ``arena_max`` (0: keep glibc's default, 8 per CPU).

    Call it early, before the worker threads start: a thread keeps the arena it was given. Returns
    whether the cap was applied: not on a C library other than glibc, nor when the operator set
    ``MALLOC_ARENA_MAX`` (or its ``GLIBC_TUNABLES`` twin), which glibc applied already.
    """
    if arena_max <= 0:
        return False
    return _mallopt(
        "malloc_arenas",
        ((M_ARENA_MAX, arena_max),),
        (ARENA_ENV_KNOB,),
        (ARENA_TUNABLE_KNOB,),
        libc,
        environ,
    )


def tune_malloc(libc: Any | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Keep freed large blocks for reuse instead of returning them after every request.

    Call it early, before the worker threads start. Returns whether the policy was applied: not
    on a C library other than glibc, nor when the operator set glibc's own ``MALLOC_*_`` knobs.
    """
    # Any of these calls turns off glibc's adaptive thresholds, so all three are set together.
    thresholds = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    )
    return _mallopt(
        "malloc_tuning", thresholds, GLIBC_ENV_KNOBS, GLIBC_TUNABLE_KNOBS, libc, environ
    )


def apply_policy(
    arena_max: int = DEFAULT_ARENA_MAX,
    thresholds: bool = DEFAULT_THRESHOLDS,
    libc: Any | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The whole policy, as the service applies it at start; returns what was applied."""
    applied: dict[str, object] = {}
    if limit_arenas(arena_max, libc, environ):
        applied["arena_max"] = arena_max
    if thresholds and tune_malloc(libc, environ):
        applied["mmap_threshold"] = MMAP_THRESHOLD_BYTES
        applied["trim_threshold"] = TRIM_THRESHOLD_BYTES
    return applied


def trim(libc: Any | None = None) -> bool:
    """Return free heap memory to the kernel; True when some was released."""
    libc = glibc() if libc is None else libc
    return bool(libc is not None and libc.malloc_trim(ctypes.c_size_t(0)))


class MemoryTrimmer:
    """Calls ``trim`` every ``interval_s`` on a worker thread (it walks every arena and can take
    milliseconds, which the event loop should not wait for)."""

    def __init__(self, interval_s: float, trim_func: Callable[[], object] = trim) -> None:
        self._interval_s = interval_s
        self._trim = trim_func
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        import asyncio  # here, not at the top: see _log

        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="malloc-trim")

    async def _run(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self._trim)
            except Exception as error:  # never let housekeeping take the server down
                _log().warning("malloc_trim_failed", error=str(error))

    async def stop(self) -> None:
        import asyncio

        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
