"""The process's policy for glibc malloc, which Python, grpc and libvips all allocate through.

Why it is needed: every request carries its source image (often over 1 MB), and gRPC, protobuf
and libvips each hold it or its pixels in large blocks. With glibc's defaults, blocks of that
size are mapped fresh and unmapped again on free, and a heap whose free top exceeds the trim
threshold is shrunk, so each request faults its buffers back in page by page (zero-filled by
the kernel). On the 2-core development VM a bare grpc.aio server receiving a 1.16 MB request
used 4.7 ms of CPU per request with the defaults and 1.5 ms with the thresholds below (see
bench/README.md). Fixed thresholds keep freed blocks for the next request. A periodic
``malloc_trim(0)``, as imgproxy does every 10 s, hands back what an idle process holds.

This module imports nothing heavy: bench/throughput.py applies the same policy to its floor.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("imagesvc.memory")

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit builds.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
TOP_PAD_BYTES = 16 * 1024 * 1024

# The same knobs set by the operator through glibc's environment variables win over ours.
GLIBC_ENV_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


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


def tune_malloc(libc: Any | None = None, environ: dict[str, str] | None = None) -> bool:
    """Keep freed large blocks for reuse instead of returning them after every request.

    Call it early, before the worker threads start. Returns whether the policy was applied: not
    on a C library other than glibc, nor when the operator set glibc's own ``MALLOC_*_`` knobs.
    """
    environ = os.environ if environ is None else environ
    overridden = [name for name in GLIBC_ENV_KNOBS if name in environ]
    if overridden:
        log.info("malloc_tuning_skipped", reason="set in the environment", variables=overridden)
        return False
    libc = glibc() if libc is None else libc
    if libc is None:
        log.info("malloc_tuning_skipped", reason="not glibc")
        return False
    # Any of these calls turns off glibc's adaptive thresholds, so all three are set together.
    for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    ):
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            log.warning("mallopt_refused", param=param, value=value)
            return False
    return True


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
        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="malloc-trim")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self._trim)
            except Exception as error:  # never let housekeeping take the server down
                log.warning("malloc_trim_failed", error=str(error))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
