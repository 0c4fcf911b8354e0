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
    assert memory.limit_arenas(1, FakeLibc(answer=0), environ={}) is False


def test_glibc_tunables_win_too():
    libc = FakeLibc()
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.malloc.trim_threshold=0"}
    assert memory.tune_malloc(libc, environ=tunables) is False
    assert memory.limit_arenas(1, libc, environ=tunables) is False
    assert libc.calls == []
    other = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    assert memory.limit_arenas(1, libc, environ=other) is True


def test_limit_arenas_sets_m_arena_max():
    libc = FakeLibc()
    assert memory.limit_arenas(2, libc, environ={}) is True
    assert libc.calls == [(memory.M_ARENA_MAX, 2)]
    assert memory.M_ARENA_MAX == -8  # glibc's <malloc.h>


def test_zero_arenas_keeps_glibc_default_and_the_variable_wins():
    libc = FakeLibc()
    assert memory.limit_arenas(0, libc, environ={}) is False
    assert memory.limit_arenas(1, libc, environ={"MALLOC_ARENA_MAX": "4"}) is False
    assert libc.calls == []


def test_apply_policy_reports_what_it_applied():
    libc = FakeLibc()
    assert memory.apply_policy(1, False, libc, environ={}) == {"arena_max": 1}
    assert libc.calls == [(memory.M_ARENA_MAX, 1)]
    libc = FakeLibc()
    applied = memory.apply_policy(0, True, libc, environ={})
    assert applied == {
        "mmap_threshold": memory.MMAP_THRESHOLD_BYTES,
        "trim_threshold": memory.TRIM_THRESHOLD_BYTES,
    }
    assert memory.M_ARENA_MAX not in dict(libc.calls)
    assert memory.apply_policy(2, True, FakeLibc(), environ={"MALLOC_ARENA_MAX": "1"}) == applied


def test_the_service_default_is_the_settings_default():
    from imagesvc.settings import Settings

    fields = Settings.model_fields
    assert fields["malloc_arena_max"].default == memory.DEFAULT_ARENA_MAX
    assert fields["malloc_tuning"].default is memory.DEFAULT_THRESHOLDS


def test_the_server_applies_the_policy_from_its_settings_before_serving(monkeypatch):
    from imagesvc.server import app

    calls = []
    monkeypatch.setenv("IMAGESVC_MALLOC_ARENA_MAX", "3")
    monkeypatch.setenv("IMAGESVC_MALLOC_TUNING", "false")
    monkeypatch.setattr(app.imagesvc_logging, "configure", lambda *a: None)
    monkeypatch.setattr(app.memory, "apply_policy", lambda *a: calls.append(("policy", a)) or {})

    async def serve(settings):
        calls.append(("serve",))

    monkeypatch.setattr(app, "serve", serve)
    app.main()
    assert calls == [("policy", (3, False)), ("serve",)]


def run_isolated(code: str, env_tuning: bool, env: dict[str, str] | None = None) -> dict:
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
        env={"PATH": "/usr/bin:/bin", **(env or {})},
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


ARENAS = """
import ctypes, os, re, tempfile, threading

def arenas():
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fd, path = tempfile.mkstemp()
    os.close(fd)
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    with open(path) as fh:
        text = fh.read()
    os.unlink(path)
    return len(re.findall(r'<heap nr="[0-9]+">', text))

applied = memory.limit_arenas(ARENA_MAX)
# Eight threads allocating at the same time: glibc gives each its own arena, up to the cap.
barrier = threading.Barrier(8)
kept = []

def work():
    barrier.wait()
    kept.append([bytearray(200_000) for _ in range(20)])
    barrier.wait()

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"applied": applied, "arenas": arenas()}))
"""


def arena_run(arena_max: int, env: dict[str, str] | None = None) -> dict:
    code = ARENAS.replace("ARENA_MAX", str(arena_max))
    return run_isolated(code, env_tuning=False, env=env)


def test_the_arena_cap_holds_for_threads_started_after_it():
    default = arena_run(0)
    capped = arena_run(1)
    assert default["applied"] is False and default["arenas"] > 1
    assert capped["applied"] is True and capped["arenas"] == 1


def test_malloc_arena_max_in_the_environment_wins_over_the_setting():
    result = arena_run(1, env={"MALLOC_ARENA_MAX": "3"})
    assert result["applied"] is False
    assert 1 < result["arenas"] <= 3


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
