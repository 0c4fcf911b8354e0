"""B1/B10 throughput benchmark: imagesvc over gRPC vs the in-process pyvips floor.

Job: fit a camera-sized JPEG into 720x720 (lanczos3), JPEG q80, optimize_coding, metadata
stripped. Arms:

* floor Nthr:  one process, pyvips (cache off, vips concurrency 1), the service's work per image
  (header -> shrink-on-load decode -> resize -> jpegsave) on a pool of ``--workers`` threads.
* floor Nproc: the same work in ``--floor-procs`` processes with one thread each.
* service cN:  ``python -m imagesvc.server`` as a subprocess on a free 127.0.0.1 port, driven by a
  grpc.aio client in its own process at concurrency N (pre-serialized requests).

Every arm's processes start once, load their inputs and warm up. Then the arms take turns: in
each round every arm processes one burst of ``--n`` images while the others sit idle, in an
order that rotates from round to round. The ratio is taken per round, against the floor burst
of the same round, and the median over rounds is reported: on a shared VM whose speed drifts by
10-20 % within a minute, this cancels the drift that a ratio of two separately timed runs keeps.
Load goes only to 127.0.0.1; every burst is bounded by its image count and ``--max-seconds``.

Memory. Every arm reports its peak RSS (VmHWM) and its idle RSS: VmRSS after the rounds and
``--idle-s`` (11 s) with nothing to do, past one periodic ``malloc_trim`` of the service
(``IMAGESVC_FREE_MEMORY_INTERVAL_S``, 10 s). The glibc malloc policy (``--arena-max``,
``--malloc-tuning``) applies to every process alike; ``--policies`` runs one set of arms per
policy, interleaved in the same rounds. ``--corpus`` takes several corpora (``synthetic``,
``photos``, ``photos-12mp`` or folders), run one after another.

Layout (``--layout``). ``pinned``, the default on a machine with 2 or more CPUs: the load
generator gets its own CPU(s) (``--client-cpus``, the last ones), and the floor and the server get
the same remaining CPUs, so both arms have the same CPU budget and the client's own cost (and its
cache traffic) is not charged to the service, as in production where callers run elsewhere.
``shared``: every process may run on every CPU, so the client competes with the service.

    .venv/bin/python bench/throughput.py [--n N] [--rounds R] [--concurrency 1,2,4]
                                         [--corpus synthetic,photos,photos-12mp,DIR]
                                         [--layout pinned|shared] [--arena-max N]
                                         [--malloc-tuning on|off] [--policies P1,P2,...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
METHOD = "/imagesvc.v1.ImageService/ProcessImage"
TARGET = 720
QUALITY = 80
SHRINK_LIMIT = 8  # libjpeg shrink-on-load: 1/2, 1/4, 1/8 (as imagesvc.engine.SHRINK_ON_LOAD)
MAX_MESSAGE = 64 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Runs argv[2:] with its CPU affinity set to argv[1] (comma-separated CPU numbers). Set before
# exec, so every thread the process ever starts inherits it.
PIN_AND_EXEC = (
    "import os, sys; "
    "os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(',')]); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def pinned(argv: list[str], cpus: frozenset[int] | None) -> list[str]:
    """``argv`` as a command line that runs on ``cpus`` only (unchanged when None)."""
    if cpus is None:
        return argv
    return [sys.executable, "-c", PIN_AND_EXEC, ",".join(map(str, sorted(cpus))), *argv]


def plan_cpus(layout: str, client_cpus: int) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """(CPUs of the floor and the server, CPUs of the load generator); None: unpinned."""
    usable = sorted(os.sched_getaffinity(0))
    if layout == "shared" or len(usable) <= client_cpus:
        return None, None
    return frozenset(usable[:-client_cpus]), frozenset(usable[-client_cpus:])


@dataclass(frozen=True)
class Policy:
    """A glibc malloc policy, applied alike to every process of the arms that run under it."""

    arena_max: int  # mallopt(M_ARENA_MAX); 0: glibc's default (8 per CPU)
    tuning: bool  # imagesvc.memory's fixed mmap/trim thresholds

    @property
    def name(self) -> str:
        arenas = f"arena{self.arena_max}" if self.arena_max else "glibc"
        return arenas + ("+tuning" if self.tuning else "")

    def role_args(self) -> list[str]:
        return [
            "--arena-max",
            str(self.arena_max),
            "--malloc-tuning",
            "on" if self.tuning else "off",
        ]

    def server_env(self) -> dict[str, str]:
        return {
            "IMAGESVC_MALLOC_ARENA_MAX": str(self.arena_max),
            "IMAGESVC_MALLOC_TUNING": "true" if self.tuning else "false",
        }


def parse_policy(text: str) -> Policy:
    """``glibc``, ``arenaN``, each optionally followed by ``+tuning``."""
    base, plus, extra = text.strip().partition("+")
    if plus and extra != "tuning":
        raise ValueError(f"bad policy {text!r}: only '+tuning' may follow the arenas")
    if base == "glibc":
        arenas = 0
    elif base.startswith("arena") and base[5:].isdigit() and int(base[5:]) >= 1:
        arenas = int(base[5:])
    else:
        raise ValueError(f"bad policy {text!r}: glibc or arenaN (N >= 1), then maybe +tuning")
    return Policy(arenas, bool(plus))


def service_default_policy() -> Policy:
    """The policy the service applies when nothing is configured (imagesvc.settings)."""
    from imagesvc.settings import Settings

    fields = Settings.model_fields
    return Policy(fields["malloc_arena_max"].default, fields["malloc_tuning"].default)


# Corpora by name; anything else given to --corpus is a folder of JPEGs.
CORPORA = ("synthetic", "photos", "photos-12mp")


def resolve_corpus(spec: str) -> tuple[str, Path]:
    """(name, folder) of one --corpus entry, building a named corpus on first use."""
    say = lambda line: print(line, flush=True)  # noqa: E731
    if spec == "synthetic":
        from corpus import build as build_synthetic  # bench/ is sys.path[0] as a script

        folder = BENCH_DIR / "corpus"
        build_synthetic(folder, log=say)
        return spec, folder
    if spec in CORPORA:
        from photos import build as build_photos

        return spec, build_photos(spec, log=say)[0].parent
    folder = Path(spec).resolve()
    return folder.name, folder


# ------------------------------------------------------------------------------------------------
# Helpers shared by all roles


def corpus_files(directory: Path) -> list[Path]:
    files = sorted(
        p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()
    )
    if not files:
        raise SystemExit(f"no .jpg files in {directory}")
    return files


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_cpu() -> tuple[float, float, float]:
    """(busy seconds summed over all CPUs, steal seconds, monotonic time) from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, steal / CLK_TCK, time.monotonic()


def foreign_cores(before, after, own_cpu_s: float) -> dict:
    """CPU used by processes other than the benchmark's during a window, in cores."""
    wall = after[2] - before[2]
    if wall <= 0:
        return {"other_cores": float("nan"), "steal_cores": float("nan")}
    return {
        "other_cores": max(0.0, (after[0] - before[0] - own_cpu_s) / wall),
        "steal_cores": (after[1] - before[1]) / wall,
    }


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bursts():
    """The role side of the protocol: READY once, then one (n, offset) per "GO n offset" line
    until "EXIT" or end of input."""
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["EXIT"]:
            return
        if len(words) != 3 or words[0] != "GO":
            raise SystemExit(f"bad command {line!r}")
        yield int(words[1]), int(words[2])


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------
# Floor: the service's per-image work, in-process (mirrors imagesvc.engine / ops.resize). The
# floor process imports only what it needs (pyvips, imagesvc.memory): its RSS is pyvips' own.


def configure_vips():
    import pyvips

    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.vips_lib.vips_concurrency_set(1)
    # As imagesvc.vips.log_warnings_only (copied, so the floor imports only pyvips).
    flags = pyvips.GLogLevelFlags
    levels = (
        flags.LEVEL_WARNING
        | flags.LEVEL_CRITICAL
        | flags.LEVEL_ERROR
        | flags.FLAG_FATAL
        | flags.FLAG_RECURSION
    )
    if pyvips._log_handler_id:
        pyvips.glib_lib.g_log_remove_handler(b"VIPS", pyvips._log_handler_id)
    pyvips._log_handler_id = pyvips.glib_lib.g_log_set_handler(
        b"VIPS", levels, pyvips._log_handler_cb, pyvips.ffi.NULL
    )
    return pyvips


def _round_half_up(value: float) -> int:
    return max(1, int(math.floor(value + 0.5)))


def floor_one(pyvips, data: bytes) -> tuple[bytes, int, int]:
    """Header -> shrink-on-load decode -> lanczos3 resize to fit TARGET -> jpegsave Q80.

    Loads from a memory source, as the service does: no copy of the bytes per load."""
    opts = {"access": "sequential", "fail_on": "error"}
    source = pyvips.Source.new_from_memory(data)
    image = pyvips.Image.new_from_source(source, "", **opts)
    orientation = image.get("orientation") if image.get_typeof("orientation") else 1
    orientation = orientation if 1 <= orientation <= 8 else 1
    src_w, src_h = (image.height, image.width) if orientation >= 5 else (image.width, image.height)
    scale = min(TARGET / src_w, TARGET / src_h, 1.0)
    out_w, out_h = _round_half_up(src_w * scale), _round_half_up(src_h * scale)
    real = max(out_w / src_w, out_h / src_h)
    shrink = 1
    while shrink * 2 <= SHRINK_LIMIT and real * shrink * 2 <= 1.0:
        shrink *= 2
    if shrink > 1:
        image = pyvips.Image.new_from_source(source, "", shrink=shrink, **opts)
    if orientation != 1:
        image = image.copy_memory().autorot()
    if (out_w, out_h) != (image.width, image.height):
        image = image.resize(out_w / image.width, vscale=out_h / image.height, kernel="lanczos3")
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True, intent="perceptual")
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("b-w" if image.bands <= 2 else "srgb").cast("uchar")
    out = image.jpegsave_buffer(Q=QUALITY, keep="none", optimize_coding=True)
    return out, out_w, out_h


def role_floor(args) -> None:
    pyvips = configure_vips()
    rss_base = proc_status()["VmRSS"]
    blobs = [p.read_bytes() for p in corpus_files(args.corpus)]
    k = len(blobs)
    rss_loaded = proc_status()["VmRSS"]
    with ThreadPoolExecutor(args.threads) as pool:
        warm = itertools.count()

        def warm_loop():
            while (i := next(warm)) < args.warmup:
                floor_one(pyvips, blobs[i % k])

        for fut in [pool.submit(warm_loop) for _ in range(args.threads)]:
            fut.result()

        for n, offset in bursts():
            counter = itertools.count()
            stop_at = time.monotonic() + args.max_seconds
            latencies: list[list[float]] = [[] for _ in range(args.threads)]

            def loop(
                slot: int, counter=counter, stop_at=stop_at, latencies=latencies, n=n, offset=offset
            ):
                own = latencies[slot]
                while time.monotonic() < stop_at and (i := next(counter)) < n:
                    t0 = time.perf_counter()
                    floor_one(pyvips, blobs[(i + offset) % k])
                    own.append(time.perf_counter() - t0)

            cpu0, t0 = self_cpu_s(), time.monotonic()
            for fut in [pool.submit(loop, s) for s in range(args.threads)]:
                fut.result()
            t1, cpu1 = time.monotonic(), self_cpu_s()
            emit(
                {
                    "t_start": t0,
                    "t_end": t1,
                    "done": sum(len(x) for x in latencies),
                    "errors": 0,
                    "latencies": [v for x in latencies for v in x],
                    "cpu_s": cpu1 - cpu0,
                    "rss_base": rss_base,
                    "rss_loaded": rss_loaded,
                    "hwm": proc_status()["VmHWM"],
                }
            )


# ------------------------------------------------------------------------------------------------
# gRPC client (its own process, grpc.aio, pre-serialized requests)


def build_requests(files: list[Path]) -> list[bytes]:
    from imagesvc.v1 import image_service_pb2 as pb

    out = []
    for path in files:
        request = pb.ProcessImageRequest(
            source=pb.ImageSource(data=path.read_bytes()),
            pipelines=[
                pb.Pipeline(
                    operations=[pb.Operation(resize=pb.Resize(width=TARGET, height=TARGET))]
                )
            ],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, quality=QUALITY),
        )
        out.append(request.SerializeToString())
    return out


def role_client(args) -> None:
    import asyncio

    import grpc

    payloads = build_requests(corpus_files(args.corpus))
    k = len(payloads)

    async def main() -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}", options=options) as channel:
            call = channel.unary_unary(METHOD)  # bytes in, bytes out

            async def drive(total: int, offset: int, latencies: list[float] | None) -> int:
                counter = itertools.count()
                stop_at = time.monotonic() + args.max_seconds
                errors = 0

                async def worker():
                    nonlocal errors
                    while time.monotonic() < stop_at and (i := next(counter)) < total:
                        t0 = time.perf_counter()
                        try:
                            reply = await call(payloads[(i + offset) % k], timeout=60)
                        except grpc.aio.AioRpcError as error:
                            errors += 1
                            if errors <= 3:
                                print(
                                    f"rpc error: {error.code()} {error.details()}",
                                    file=sys.stderr,
                                    flush=True,
                                )
                            continue
                        if latencies is not None and reply:
                            latencies.append(time.perf_counter() - t0)

                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return errors

            await drive(args.warmup, 0, None)
            loop = asyncio.get_running_loop()
            commands = bursts()
            while (command := await loop.run_in_executor(None, next, commands, None)) is not None:
                n, offset = command
                latencies: list[float] = []
                cpu0, t0 = self_cpu_s(), time.monotonic()
                errors = await drive(n, offset, latencies)
                t1, cpu1 = time.monotonic(), self_cpu_s()
                emit(
                    {
                        "t_start": t0,
                        "t_end": t1,
                        "done": len(latencies),
                        "errors": errors,
                        "latencies": latencies,
                        "cpu_s": cpu1 - cpu0,
                        "hwm": proc_status()["VmHWM"],
                    }
                )

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Orchestrator


class Child:
    """A role subprocess speaking the READY / GO n offset / RESULT / EXIT protocol."""

    def __init__(self, argv: list[str], name: str, cpus: frozenset[int] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            pinned([sys.executable, str(Path(__file__).resolve()), *argv], cpus),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            bufsize=1,
        )
        # A reader thread, so that a wait never blocks on a line already buffered.
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no {prefix} within {timeout:.0f}s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited (rc={self.proc.wait()}) before {prefix}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def go(self, n: int, offset: int) -> None:
        self.proc.stdin.write(f"GO {n} {offset}\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict:
        return json.loads(self.expect("RESULT ", timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("EXIT\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def summarize_burst(results: list[dict]) -> dict:
    t0 = min(r["t_start"] for r in results)
    t1 = max(r["t_end"] for r in results)
    done = sum(r["done"] for r in results)
    wall = t1 - t0
    return {
        "n": done,
        "wall_s": wall,
        "img_s": done / wall if wall > 0 else 0.0,
        "errors": sum(r.get("errors", 0) for r in results),
        "latencies": [v for r in results for v in r["latencies"]],
    }


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before by this process: the kernel may offer a
    port just released again, and two servers started together then collided on it."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Server:
    """imagesvc.server as a subprocess on free loopback ports."""

    def __init__(
        self,
        workers: int,
        log_path: Path,
        policy: Policy,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "IMAGESVC_HOST": "127.0.0.1",
            "IMAGESVC_PORT": str(self.port),
            "IMAGESVC_METRICS_HOST": "127.0.0.1",
            "IMAGESVC_METRICS_PORT": str(self.metrics_port),
            "IMAGESVC_WORKERS": str(workers),
            **policy.server_env(),
            "IMAGESVC_TRITON_URL": "127.0.0.1:1",
            "IMAGESVC_LOG_LEVEL": "warning",
            "IMAGESVC_GRACE_PERIOD_S": "1",
            "IMAGESVC_DRAIN_S": "0",
        }
        self.log = open(log_path, "a")
        self.log.write(f"\n=== start {dt.datetime.now().isoformat()} port={self.port}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            pinned([sys.executable, "-m", "imagesvc.server"], cpus),
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def wait_ready(self, probe: bytes, timeout: float = 60) -> bytes:
        """Retry one ProcessImage until it succeeds; returns the reply bytes."""
        import grpc

        deadline = time.monotonic() + timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options) as channel:
            call = channel.unary_unary(METHOD)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}; see {self.log.name}"
                    )
                try:
                    return call(probe, timeout=10)
                except grpc.RpcError as error:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"server not answering: {error}") from error
                    time.sleep(0.2)

    def call_all(self, payloads: list[bytes]) -> list[bytes]:
        import grpc

        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options) as channel:
            call = channel.unary_unary(METHOD)
            return [call(p, timeout=60) for p in payloads]

    def scrape(self) -> dict[str, float]:
        """Sum / count of the step and RPC histograms from /metrics."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        pattern = re.compile(
            r"^(imagesvc_pipeline_step_duration_seconds|grpc_server_handling_seconds)_(sum|count)"
            r"\{([^}]*)\}\s+(\S+)$"
        )
        for line in text.splitlines():
            m = pattern.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3)))
            if m.group(1).startswith("grpc"):
                if labels.get("grpc_method") != "ProcessImage":
                    continue
                key = "rpc"
            else:
                key = labels.get("op", "?")
            out[f"{key}_{m.group(2)}"] = out.get(f"{key}_{m.group(2)}", 0.0) + float(m.group(4))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class FloorArm:
    """``processes`` floor processes with ``threads`` threads each, driven together."""

    def __init__(
        self, args, policy: Policy, processes: int, threads: int, *, per_process: bool = False
    ) -> None:
        self.base_name = f"floor {processes}proc" if per_process else f"floor {threads}thr"
        self.name = arm_name(args, self.base_name, policy)
        self.kind = "floor"
        self.policy = policy
        self.children = [
            Child(
                [
                    "--role",
                    "floor",
                    "--corpus",
                    str(args.corpus),
                    "--threads",
                    str(threads),
                    "--warmup",
                    str(args.warmup_n),
                    "--max-seconds",
                    str(args.max_seconds),
                    *policy.role_args(),
                ],
                f"{self.name}[{i}]",
                args.arm_cpus,
            )
            for i in range(processes)
        ]

    def ready(self) -> None:
        for child in self.children:
            child.expect("READY", 300)

    def burst(self, args, n: int, offset: int) -> dict:
        count = len(self.children)
        shares = [n // count + (1 if i < n % count else 0) for i in range(count)]
        stat0 = system_cpu()
        for i, child in enumerate(self.children):
            child.go(shares[i], offset + sum(shares[:i]))
        results = [child.result(args.max_seconds + 60) for child in self.children]
        stat1 = system_cpu()
        out = summarize_burst(results)
        self.rss_base = sum(r["rss_base"] for r in results)
        self.rss_loaded = sum(r["rss_loaded"] for r in results)
        own = sum(r["cpu_s"] for r in results)
        out.update(foreign_cores(stat0, stat1, own))
        out["cpu_s"] = own
        return out

    def rss_mb(self) -> float:
        return sum(proc_status(c.proc.pid)["VmRSS"] for c in self.children) / 2**20

    def finish(self) -> dict:
        hwm = [proc_status(c.proc.pid)["VmHWM"] / 2**20 for c in self.children]
        for child in self.children:
            child.close()
        return {
            "policy": self.policy.name,
            "peak_rss_mb": sum(hwm),
            "peak_rss_mb_per_process": hwm,
            "rss_base_mb": self.rss_base / 2**20,
            "rss_loaded_mb": self.rss_loaded / 2**20,
        }

    def kill(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()


class ServiceArm:
    """A fresh imagesvc server and its own client process at one concurrency."""

    def __init__(self, args, policy: Policy, concurrency: int, log_path: Path) -> None:
        self.base_name = f"service c{concurrency}"
        self.name = arm_name(args, self.base_name, policy)
        self.kind = "service"
        self.policy = policy
        self.concurrency = concurrency
        self.server = Server(args.service_workers, log_path, policy, args.arm_cpus)
        self.client: Child | None = None
        self.args = args

    def ready(self, probe: bytes) -> None:
        args = self.args
        self.server.wait_ready(probe)
        self.rss_ready = proc_status(self.server.pid)["VmRSS"]
        self.client = Child(
            [
                "--role",
                "client",
                "--corpus",
                str(args.corpus),
                "--port",
                str(self.server.port),
                "--concurrency",
                str(self.concurrency),
                "--warmup",
                str(max(args.warmup_n, 2 * self.concurrency)),
                "--max-seconds",
                str(args.max_seconds),
                *self.policy.role_args(),
            ],
            f"client[c={self.concurrency}]",
            args.client_cpus_set,
        )
        self.client.expect("READY", 300)
        self.metrics0 = self.server.scrape()

    def burst(self, args, n: int, offset: int) -> dict:
        stat0 = system_cpu()
        cpu0 = proc_cpu_s(self.server.pid)
        self.client.go(n, offset)
        result = self.client.result(args.max_seconds + 60)
        cpu1 = proc_cpu_s(self.server.pid)
        stat1 = system_cpu()
        out = summarize_burst([result])
        server_cpu = cpu1 - cpu0
        out.update(foreign_cores(stat0, stat1, server_cpu + result["cpu_s"]))
        out["cpu_s"] = server_cpu + result["cpu_s"]
        out["server_cpu_s"] = server_cpu
        out["client_cpu_s"] = result["cpu_s"]
        out["client_hwm"] = result["hwm"]
        return out

    def rss_mb(self) -> float:
        return proc_status(self.server.pid)["VmRSS"] / 2**20

    def finish(self) -> dict:
        metrics1 = self.server.scrape()
        steps = {}
        for key in sorted({k.rsplit("_", 1)[0] for k in metrics1}):
            count = metrics1.get(f"{key}_count", 0) - self.metrics0.get(f"{key}_count", 0)
            total = metrics1.get(f"{key}_sum", 0) - self.metrics0.get(f"{key}_sum", 0)
            if count > 0:
                steps[key] = {"count": int(count), "mean_ms": total / count * 1e3}
        hwm = proc_status(self.server.pid)["VmHWM"] / 2**20
        self.client.close()
        self.server.stop()
        return {
            "policy": self.policy.name,
            "peak_rss_mb": hwm,
            "rss_ready_mb": self.rss_ready / 2**20,
            "server_steps": steps,
        }

    def kill(self) -> None:
        if self.client is not None and self.client.proc.poll() is None:
            self.client.proc.kill()
        if self.server.proc.poll() is None:
            self.server.proc.kill()


def verify(args, files: list[Path], log_path: Path) -> dict:
    """Check that the floor does the service's work: same output bytes for every corpus file."""
    pyvips = configure_vips()
    payloads = build_requests(files)
    from imagesvc.v1 import image_service_pb2 as pb

    server = Server(args.service_workers, log_path, args.policies[0])
    try:
        server.wait_ready(payloads[0])
        replies = [pb.ProcessImageResponse.FromString(b) for b in server.call_all(payloads)]
    finally:
        server.stop()
    identical = 0
    mismatches = []
    for path, reply in zip(files, replies, strict=True):
        data, w, h = floor_one(pyvips, path.read_bytes())
        if (reply.width, reply.height) != (w, h):
            mismatches.append(f"{path.name}: service {reply.width}x{reply.height}, floor {w}x{h}")
        elif reply.data == data:
            identical += 1
        else:
            mismatches.append(
                f"{path.name}: same size, different bytes ({len(reply.data)} vs {len(data)})"
            )
    return {
        "files": len(files),
        "byte_identical": identical,
        "mismatches": mismatches,
        "output_sizes": sorted({f"{r.width}x{r.height}" for r in replies}),
    }


def med(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    import statistics

    return statistics.median(values) if values else float("nan")


def environment() -> dict:
    import platform

    import grpc
    import pyvips

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "pyvips": pyvips.__version__,
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "grpcio": grpc.__version__,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "kernel": platform.release(),
        # Settings that change the figures when set in the environment of every arm.
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(("MALLOC_", "VIPS_", "IMAGESVC_", "GRPC_", "PYTHONMALLOC"))
        },
    }


def describe_layout(args) -> str:
    if args.arm_cpus is None:
        return "shared (every process on every CPU; the client competes with the arm it drives)"
    arm = ",".join(map(str, sorted(args.arm_cpus)))
    client = ",".join(map(str, sorted(args.client_cpus_set)))
    return f"pinned (floor and server on CPU {arm}; load generator on CPU {client})"


def arm_name(args, base: str, policy: Policy) -> str:
    """The arm's name: its kind, and its policy when the run compares several."""
    return base if len(args.policies) == 1 else f"{base} {policy.name}"


def orchestrate(args, corpus_name: str, corpus_dir: Path) -> tuple[int, dict]:
    """One whole run on one corpus; returns (exit status, summary by arm)."""
    started = time.monotonic()
    args.corpus = corpus_dir.resolve()
    files = corpus_files(args.corpus)
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if len(args.corpora) > 1:
        stamp += f"-{corpus_name}"
    log_path = results_dir / f"server-{stamp}.log"
    warmup = len(files) if args.warmup is None else args.warmup
    args.warmup_n = warmup
    env = environment()
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"\n=== corpus {corpus_name}: {len(files)} JPEGs, {total_mb:.1f} MB, {args.corpus}")
    print(
        f"workers={args.workers} (service {args.service_workers})  n={args.n} per burst  "
        f"rounds={args.rounds}  warmup={warmup}  concurrency={args.concurrency}  "
        f"malloc policies: {', '.join(p.name for p in args.policies)} (every process alike)  "
        f"cpus={env['cpus_usable']} ({env['cpu_model']})",
        flush=True,
    )
    print(f"layout: {describe_layout(args)}", flush=True)

    check = verify(args, files, log_path)
    print(
        f"verify: {check['byte_identical']}/{check['files']} service replies byte-identical "
        f"to the floor's output; sizes {', '.join(check['output_sizes'])}",
        flush=True,
    )
    for line in check["mismatches"]:
        print(f"  mismatch: {line}")

    probe = build_requests(files[:1])[0]
    arms: list = []
    floors: dict[Policy, object] = {}
    try:
        for policy in args.policies:
            floors[policy] = FloorArm(args, policy, 1, args.workers)
            arms.append(floors[policy])
            for conc in args.concurrency:
                arms.append(ServiceArm(args, policy, conc, log_path))
            if args.floor_procs > 0:
                arms.append(FloorArm(args, policy, args.floor_procs, 1, per_process=True))
        for arm in arms:  # start-up and warm-up, one arm at a time
            arm.ready(probe) if arm.kind == "service" else arm.ready()

        before = system_cpu()
        time.sleep(1.0)
        idle_load = foreign_cores(before, system_cpu(), 0.0)["other_cores"]
        print(f"background CPU load before the rounds: {idle_load:.2f} cores", flush=True)

        bursts_by_arm: dict[str, list[dict]] = {arm.name: [] for arm in arms}
        for rnd in range(args.rounds):
            offset = (rnd * 5) % len(files)  # every arm gets the same images in a round
            shift = rnd % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                burst = arm.burst(args, args.n, offset)
                burst["round"] = rnd
                bursts_by_arm[arm.name].append(burst)
            line = "  ".join(f"{name} {b[-1]['img_s']:6.2f}" for name, b in bursts_by_arm.items())
            noisy = max(b[-1]["other_cores"] for b in bursts_by_arm.values())
            print(
                f"  round {rnd + 1:>2}/{args.rounds}  img/s: {line}  "
                f"(most other cores {noisy:.2f})",
                flush=True,
            )
        # Every process idles together: the server's periodic malloc_trim runs in that time.
        end_rss = {arm.name: arm.rss_mb() for arm in arms}
        if args.idle_s > 0:
            print(f"idle for {args.idle_s:.0f} s ...", flush=True)
            time.sleep(args.idle_s)
        idle_rss = {arm.name: arm.rss_mb() for arm in arms}
        finals = {arm.name: arm.finish() for arm in arms}
    finally:
        for arm in arms:
            arm.kill()

    reference = arms[0].name  # the first policy's one-process floor

    def quiet(burst: dict) -> bool:
        return burst["other_cores"] <= args.noise_limit

    def ratios_to(bs: list[dict], floor_bursts: list[dict]) -> dict:
        pairs = [
            (b["img_s"] / f["img_s"], quiet(b) and quiet(f))
            for b, f in zip(bs, floor_bursts, strict=True)
            if f["img_s"] > 0
        ]
        ratios = [r for r, ok in pairs if ok] or [r for r, _ in pairs]
        return {
            "ratio": med(ratios),
            "per_round": [round(r, 4) for r, _ in pairs],
            "quartiles": [percentile(ratios, 0.25), percentile(ratios, 0.75)],
        }

    summary = {}
    for arm in arms:
        bs = bursts_by_arm[arm.name]
        used = [b for b in bs if quiet(b)] or bs
        images = sum(b["n"] for b in used)
        lat = [v for b in used for v in b["latencies"]]
        floor = floors[arm.policy]
        row = {
            "bursts": len(bs),
            "bursts_quiet": sum(quiet(b) for b in bs),
            "img_s": med([b["img_s"] for b in used]),
            "img_s_bursts": [round(b["img_s"], 3) for b in bs],
            "p50_ms": percentile(lat, 0.50) * 1e3,
            "p95_ms": percentile(lat, 0.95) * 1e3,
            "cpu_ms_per_img": sum(b["cpu_s"] for b in used) / max(images, 1) * 1e3,
            "errors": sum(b["errors"] for b in bs),
            "other_cores_max": max(b["other_cores"] for b in bs),
            "end_rss_mb": end_rss[arm.name],
            "idle_rss_mb": idle_rss[arm.name],
            **finals[arm.name],
        }
        if arm is not floor:  # against the floor of the same policy, as every arm before
            same = ratios_to(bs, bursts_by_arm[floor.name])
            row["ratio"] = same["ratio"]
            row["ratio_per_round"] = same["per_round"]
            row["ratio_quartiles"] = same["quartiles"]
            row["rss_ratio"] = row["peak_rss_mb"] / finals[floor.name]["peak_rss_mb"]
        if arm.name != reference:  # against the first policy's floor: the policy's own effect
            ref = ratios_to(bs, bursts_by_arm[reference])
            row["vs_reference"] = ref["ratio"]
            row["vs_reference_quartiles"] = ref["quartiles"]
        if arm.kind == "service":
            row["server_cpu_ms_per_img"] = (
                sum(b["server_cpu_s"] for b in used) / max(images, 1) * 1e3
            )
            row["client_cpu_ms_per_img"] = (
                sum(b["client_cpu_s"] for b in used) / max(images, 1) * 1e3
            )
            row["client_peak_rss_mb"] = max(b["client_hwm"] for b in bs) / 2**20
        summary[arm.name] = row

    print()
    print(
        f"corpus {corpus_name}: medians over {args.rounds} rounds of one {args.n}-image burst "
        f"per arm ({args.service_workers} service workers, {args.workers} floor threads)"
    )
    width = max(14, *(len(name) for name in summary))
    header = (
        f"{'arm':<{width}} {'img/s':>7} {'ratio':>6} {'ratio IQR':>11} {'vs ref':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'cpu ms/img':>10} {'peak RSS MB':>11} "
        f"{'idle RSS MB':>11} {'quiet':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
        iqr = "%.3f-%.3f" % tuple(row["ratio_quartiles"]) if "ratio" in row else ""
        vs_ref = f"{row['vs_reference']:.3f}" if "vs_reference" in row else ""
        print(
            f"{name:<{width}} {row['img_s']:7.2f} {ratio:>6} {iqr:>11} {vs_ref:>6} "
            f"{row['p50_ms']:7.1f} {row['p95_ms']:7.1f} {row['cpu_ms_per_img']:10.1f} "
            f"{row['peak_rss_mb']:11.1f} {row['idle_rss_mb']:11.1f} "
            f"{row['bursts_quiet']:>3}/{row['bursts']}"
        )
    print(
        "ratio = median over rounds of (arm img/s / img/s of the one-process floor of the same "
        "policy in the same round); target >= 0.90 for the service at concurrency 2-4. vs ref = the "
        f"same against {reference}. cpu = all the arm's processes (service: server + client). "
        f"idle RSS = VmRSS after the rounds and {args.idle_s:.0f} s idle. quiet = bursts during "
        f"which other processes used <= {args.noise_limit} cores; only those count when there "
        "are any."
    )
    floor_loaded = finals[reference]["rss_loaded_mb"] - finals[reference]["rss_base_mb"]
    print(
        f"the floor processes hold the corpus ({floor_loaded:.1f} MB of RSS); the server holds "
        "only the requests in flight"
    )
    loaded = [
        r["ratio"]
        for n, r in summary.items()
        if n.startswith("service c") and 2 <= int(n.split()[1].removeprefix("c")) <= 4
    ]
    if loaded:
        print(f"B1: lowest service ratio at concurrency 2-4: {min(loaded):.3f} (target >= 0.90)")
    if "service c1" in summary:
        overhead = summary["service c1"]["p50_ms"] - summary[reference]["p50_ms"]
        print(
            f"p50 latency overhead at concurrency 1 (service c1 round trip - {reference} "
            f"processing time): {overhead:+.1f} ms (target <= +3 ms)"
        )
    noisy = [n for n, r in summary.items() if r["bursts_quiet"] == 0]
    if noisy:
        print(
            f"WARNING: no quiet burst for {', '.join(noisy)}: the machine was busy, treat those "
            "figures with care"
        )
    print(
        "peak RSS / floor peak RSS (same policy): "
        + ", ".join(f"{n} {r['rss_ratio']:.2f}" for n, r in summary.items() if "rss_ratio" in r)
        + "  (B10 target <= 1.5; goal of issue 7: <= 1.0)"
    )
    for name, row in summary.items():
        if "server_steps" in row:
            steps = row["server_steps"]
            print(
                f"{name}: server cpu {row['server_cpu_ms_per_img']:.1f} ms/img, client cpu "
                f"{row['client_cpu_ms_per_img']:.1f} ms/img; mean step ms: "
                + ", ".join(f"{k} {v['mean_ms']:.1f}" for k, v in steps.items())
            )
    errors = sum(r["errors"] for r in summary.values())
    if errors:
        print(f"WARNING: {errors} requests failed (see stderr and {log_path.name})")

    out = {
        "benchmark": "B1/B10 imagesvc ProcessImage fit 720x720 JPEG q80 vs pyvips floor",
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "background_load_cores": idle_load,
        "config": {
            "n_per_burst": args.n,
            "rounds": args.rounds,
            "warmup": warmup,
            "noise_limit": args.noise_limit,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "service_workers": args.service_workers,
            "floor_procs": args.floor_procs,
            "policies": [p.name for p in args.policies],
            "malloc_tuning": "on" if args.policies[0].tuning else "off",
            "arena_max": args.policies[0].arena_max,
            "idle_s": args.idle_s,
            "layout": args.layout if args.arm_cpus is not None else "shared",
            "arm_cpus": sorted(args.arm_cpus) if args.arm_cpus is not None else None,
            "client_cpus": (
                sorted(args.client_cpus_set) if args.client_cpus_set is not None else None
            ),
            "corpus_name": corpus_name,
            "corpus": str(args.corpus),
            "corpus_files": [p.name for p in files],
            "corpus_mb": total_mb,
        },
        "environment": env,
        "verify": check,
        "summary": summary,
        "bursts": {
            name: [{k: v for k, v in b.items() if k != "latencies"} for b in bs]
            for name, bs in bursts_by_arm.items()
        },
        "elapsed_s": time.monotonic() - started,
    }
    path = results_dir / f"throughput-{stamp}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
        f"({out['elapsed_s']:.0f} s)"
    )
    return (1 if check["mismatches"] or errors else 0), summary


def print_memory_table(results: dict[str, dict]) -> None:
    """Peak and idle RSS of every arm on every corpus, next to its throughput ratio."""
    print("\nmemory by corpus (MB; ratio = vs the one-process floor of the same policy)")
    width = max(len(name) for summary in results.values() for name in summary)
    print(f"{'corpus':<12} {'arm':<{width}} {'peak RSS':>8} {'idle RSS':>8} {'ratio':>6}")
    for corpus_name, summary in results.items():
        for name, row in summary.items():
            ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
            print(
                f"{corpus_name:<12} {name:<{width}} {row['peak_rss_mb']:8.1f} "
                f"{row['idle_rss_mb']:8.1f} {ratio:>6}"
            )


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="images per burst (default 60)")
    parser.add_argument("--rounds", type=int, default=12, help="bursts per arm (default 12)")
    parser.add_argument(
        "--concurrency",
        default="1,2,4",
        help="client concurrencies, comma-separated (default 1,2,4; the B1 target is for 2-4)",
    )
    parser.add_argument(
        "--layout",
        choices=("pinned", "shared"),
        default="pinned",
        help="pinned: the client on its own CPU(s), the floor and the server on the same others "
        "(default; needs 2+ CPUs, else shared); shared: every process on every CPU",
    )
    parser.add_argument(
        "--client-cpus", type=int, default=1, help="CPUs reserved for the load generator (1)"
    )
    parser.add_argument(
        "--corpus",
        default="synthetic",
        help="corpora, comma-separated, run one after another: synthetic (bench/corpus.py), "
        "photos, photos-12mp (bench/photos.py; built on first use), or folders of JPEGs "
        "(default: synthetic)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="IMAGESVC_WORKERS and floor threads (default: the arms' CPUs)",
    )
    parser.add_argument(
        "--service-workers",
        type=int,
        default=None,
        help="IMAGESVC_WORKERS of the service only (default: --workers)",
    )
    parser.add_argument(
        "--floor-procs",
        type=int,
        default=None,
        help="processes of the multi-process floor (default: workers; 0: skip)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed images per process before the rounds (default: corpus size)",
    )
    parser.add_argument("--max-seconds", type=float, default=120, help="time cap of one burst")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=0.15,
        help="CPU cores used by other processes above which a burst does not count",
    )
    parser.add_argument(
        "--malloc-tuning",
        choices=("on", "off"),
        default=None,
        help="imagesvc.memory's fixed malloc thresholds (IMAGESVC_MALLOC_TUNING), in every "
        "process alike (default: the service's default)",
    )
    parser.add_argument(
        "--arena-max",
        type=int,
        default=None,
        help="glibc malloc arenas (IMAGESVC_MALLOC_ARENA_MAX, mallopt M_ARENA_MAX), in every "
        "process alike; 0: glibc's default (default: the service's default)",
    )
    parser.add_argument(
        "--policies",
        default=None,
        help="compare malloc policies in one run: comma-separated, each glibc or arenaN, "
        "optionally +tuning (e.g. glibc+tuning,arena1,arena2+tuning); one floor and one set of "
        "service arms per policy, all interleaved. Overrides --arena-max and --malloc-tuning",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=11.0,
        help="idle time after the rounds before the idle RSS is read (default 11: past one "
        "periodic malloc_trim of the service)",
    )
    # internal roles
    parser.add_argument("--role", choices=("floor", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role is not None:
        # Before pyvips or grpc start any thread. Light: the floor stays a pyvips-only process.
        from imagesvc.memory import apply_policy

        apply_policy(args.arena_max or 0, args.malloc_tuning == "on")
        args.corpus = Path(args.corpus)
    if args.role == "floor":
        role_floor(args)
        return 0
    if args.role == "client":
        args.concurrency = int(args.concurrency)
        role_client(args)
        return 0
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.client_cpus < 1:
        parser.error("--client-cpus must be >= 1")
    args.arm_cpus, args.client_cpus_set = plan_cpus(args.layout, args.client_cpus)
    if args.workers is None:
        args.workers = len(args.arm_cpus) if args.arm_cpus is not None else default_workers()
    if args.service_workers is None:
        args.service_workers = args.workers
    if args.floor_procs is None:
        args.floor_procs = args.workers if args.workers > 1 else 0
    if args.n < 1 or args.rounds < 1 or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--n, --rounds and every concurrency must be >= 1")
    try:
        if args.policies:
            args.policies = [parse_policy(p) for p in args.policies.split(",") if p.strip()]
        else:
            default = service_default_policy()
            arenas = default.arena_max if args.arena_max is None else args.arena_max
            tuning = default.tuning if args.malloc_tuning is None else args.malloc_tuning == "on"
            args.policies = [Policy(max(arenas, 0), tuning)]
    except ValueError as error:
        parser.error(str(error))
    if len(set(args.policies)) != len(args.policies):
        parser.error("--policies: each policy once")
    args.corpora = [c.strip() for c in args.corpus.split(",") if c.strip()]
    status, results = 0, {}
    for spec in args.corpora:
        name, folder = resolve_corpus(spec)
        if name in results:  # two folders of the same name
            name = f"{name}-{len(results) + 1}"
        rc, results[name] = orchestrate(args, name, folder)
        status = max(status, rc)
    print_memory_table(results)
    return status


if __name__ == "__main__":
    sys.exit(main())
