"""The glibc malloc policy: thresholds that keep request-sized blocks, and periodic trims."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from imagesvc import memory

pytestmark = pytest.mark.skipif(memory.glibc() is None, reason="glibc only")


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param, value) -> int:
        self.calls.append((param.value, value.value))
        return self.answer


def test_tune_malloc_sets_fixed_thresholds():
    libc = FakeLibc()
    assert memory.tune_malloc(libc, environ={}) is True
    assert dict(libc.calls) == {
        memory.M_MMAP_THRESHOLD: 32 * 2**20,
        memory.M_TRIM_THRESHOLD: 128 * 2**20,
        memory.M_TOP_PAD: 16 * 2**20,
    }


def test_glibc_environment_variables_win():
    libc = FakeLibc()
    assert memory.tune_malloc(libc, environ={"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    assert libc.calls == []


def test_a_refused_setting_is_reported():
    assert memory.tune_malloc(FakeLibc(answer=0), environ={}) is False


def run_isolated(code: str, env_tuning: bool) -> dict:
    """Run ``code`` in a fresh interpreter (malloc state is per process); it prints JSON."""
    prelude = textwrap.dedent(
        """
        import json, resource
        from imagesvc import memory
        if TUNE:
            assert memory.tune_malloc(environ={})

        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def rss_mb():
            with open("/proc/self/status") as fh:
                line = next(x for x in fh if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024
        """
    ).replace("TUNE", str(env_tuning))
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# Requests in flight hold several request-sized buffers at once (received bytes, the parsed
# message, the source field, decode buffers), all freed when the requests end.
REUSE = """
def one_round():
    blocks = [bytearray(3 * 2**20) for _ in range(3)]
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])
    del blocks

for _ in range(5):
    one_round()
start = faults()
for _ in range(20):
    one_round()
print(json.dumps({"faults_per_block": (faults() - start) / 60}))
"""


def test_freed_request_sized_blocks_are_reused_without_page_faults():
    default = run_isolated(REUSE, env_tuning=False)["faults_per_block"]
    tuned = run_isolated(REUSE, env_tuning=True)["faults_per_block"]
    # A 3 MiB block is 768 pages: glibc's defaults map it fresh each time (or trim it away),
    # the tuned thresholds keep it.
    assert default > 500
    assert tuned < 50


TRIM = """
chunks = [bytearray(256 * 1024) for _ in range(400)]  # 100 MiB on the heap, touched
for c in chunks:
    c[::4096] = b"x" * len(c[::4096])
del chunks
kept = rss_mb()
released = memory.trim()
print(json.dumps({"kept": kept, "after": rss_mb(), "released": released}))
"""


def test_trim_hands_kept_memory_back():
    result = run_isolated(TRIM, env_tuning=True)
    assert result["released"] is True
    assert result["kept"] - result["after"] > 50  # MiB


async def test_trimmer_runs_periodically_and_stops():
    calls = []
    trimmer = memory.MemoryTrimmer(0.01, lambda: calls.append(1))
    trimmer.start()
    await asyncio.sleep(0.2)
    await trimmer.stop()
    seen = len(calls)
    assert seen >= 3
    await asyncio.sleep(0.05)
    assert len(calls) == seen


async def test_trimmer_survives_a_failing_trim():
    calls = []

    def failing():
        calls.append(1)
        raise OSError("boom")

    trimmer = memory.MemoryTrimmer(0.01, failing)
    trimmer.start()
    await asyncio.sleep(0.1)
    await trimmer.stop()
    assert len(calls) >= 2


async def test_interval_zero_never_trims():
    calls = []
    trimmer = memory.MemoryTrimmer(0, lambda: calls.append(1))
    trimmer.start()
    await asyncio.sleep(0.05)
    await trimmer.stop()
    assert calls == []
