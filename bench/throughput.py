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

Layout (``--layout``). ``pinned``, the default on a machine with 2 or more CPUs: the load
generator gets its own CPU(s) (``--client-cpus``, the last ones), and the floor and the server get
the same remaining CPUs, so both arms have the same CPU budget and the client's own cost (and its
cache traffic) is not charged to the service, as in production where callers run elsewhere.
``shared``: every process may run on every CPU, so the client competes with the service.

    .venv/bin/python bench/throughput.py [--n N] [--rounds R] [--concurrency 1,2,4] [--corpus DIR]
                                         [--layout pinned|shared]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import queue
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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
# Floor: the service's per-image work, in-process (mirrors imagesvc.engine / ops.resize)


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """imagesvc.server as a subprocess on free loopback ports."""

    def __init__(
        self,
        workers: int,
        log_path: Path,
        malloc_tuning: bool,
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
            "IMAGESVC_MALLOC_TUNING": "true" if malloc_tuning else "false",
            "IMAGESVC_TRITON_URL": "127.0.0.1:1",
            "IMAGESVC_LOG_LEVEL": "warning",
            "IMAGESVC_GRACE_PERIOD_S": "1",
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

    def __init__(self, args, processes: int, threads: int, *, per_process: bool = False) -> None:
        self.name = f"floor {processes}proc" if per_process else f"floor {threads}thr"
        self.kind = "floor"
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
                    str(args.warmup),
                    "--max-seconds",
                    str(args.max_seconds),
                    "--malloc-tuning",
                    args.malloc_tuning,
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
        own = sum(r["cpu_s"] for r in results)
        out.update(foreign_cores(stat0, stat1, own))
        out["cpu_s"] = own
        return out

    def finish(self) -> dict:
        hwm = [proc_status(c.proc.pid)["VmHWM"] / 2**20 for c in self.children]
        for child in self.children:
            child.close()
        return {"peak_rss_mb": sum(hwm), "peak_rss_mb_per_process": hwm}

    def kill(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()


class ServiceArm:
    """A fresh imagesvc server and its own client process at one concurrency."""

    def __init__(self, args, concurrency: int, log_path: Path) -> None:
        self.name = f"service c{concurrency}"
        self.kind = "service"
        self.concurrency = concurrency
        self.server = Server(
            args.service_workers, log_path, args.malloc_tuning == "on", args.arm_cpus
        )
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
                str(max(args.warmup, 2 * self.concurrency)),
                "--max-seconds",
                str(args.max_seconds),
                "--malloc-tuning",
                args.malloc_tuning,
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

    server = Server(args.service_workers, log_path, args.malloc_tuning == "on")
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
    return statistics.median(values) if values else float("nan")


def environment() -> dict:
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


def orchestrate(args) -> int:
    from corpus import build as build_corpus  # bench/ is sys.path[0] when run as a script

    started = time.monotonic()
    if args.corpus is None:
        args.corpus = BENCH_DIR / "corpus"
        build_corpus(args.corpus, log=lambda s: print(s, flush=True))
    args.corpus = args.corpus.resolve()
    files = corpus_files(args.corpus)
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = results_dir / f"server-{stamp}.log"
    if args.warmup is None:
        args.warmup = len(files)
    env = environment()
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"corpus: {len(files)} JPEGs, {total_mb:.1f} MB, {args.corpus}")
    print(
        f"workers={args.workers} (service {args.service_workers})  n={args.n} per burst  "
        f"rounds={args.rounds}  warmup={args.warmup}  concurrency={args.concurrency}  "
        f"malloc tuning={args.malloc_tuning} (all arms)  "
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
    try:
        arms.append(FloorArm(args, 1, args.workers))
        for conc in args.concurrency:
            arms.append(ServiceArm(args, conc, log_path))
        if args.floor_procs > 0:
            arms.append(FloorArm(args, args.floor_procs, 1, per_process=True))
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
        finals = {arm.name: arm.finish() for arm in arms}
    finally:
        for arm in arms:
            arm.kill()

    floor_name = arms[0].name
    floor_bursts = bursts_by_arm[floor_name]

    def quiet(burst: dict) -> bool:
        return burst["other_cores"] <= args.noise_limit

    summary = {}
    for arm in arms:
        bs = bursts_by_arm[arm.name]
        used = [b for b in bs if quiet(b)] or bs
        images = sum(b["n"] for b in used)
        lat = [v for b in used for v in b["latencies"]]
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
            **finals[arm.name],
        }
        if arm is not arms[0]:
            pairs = [
                (b["img_s"] / f["img_s"], quiet(b) and quiet(f))
                for b, f in zip(bs, floor_bursts, strict=True)
                if f["img_s"] > 0
            ]
            ratios = [r for r, ok in pairs if ok] or [r for r, _ in pairs]
            row["ratio"] = med(ratios)
            row["ratio_per_round"] = [round(r, 4) for r, _ in pairs]
            row["ratio_quartiles"] = [percentile(ratios, 0.25), percentile(ratios, 0.75)]
            row["rss_ratio"] = row["peak_rss_mb"] / finals[floor_name]["peak_rss_mb"]
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
        f"medians over {args.rounds} rounds of one {args.n}-image burst per arm "
        f"({args.service_workers} service workers, {args.workers} floor threads)"
    )
    header = (
        f"{'arm':<14} {'img/s':>7} {'ratio':>6} {'ratio IQR':>11} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'cpu ms/img':>10} {'peak RSS MB':>11} {'quiet':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
        iqr = "%.3f-%.3f" % tuple(row["ratio_quartiles"]) if "ratio" in row else ""
        print(
            f"{name:<14} {row['img_s']:7.2f} {ratio:>6} {iqr:>11} {row['p50_ms']:7.1f} "
            f"{row['p95_ms']:7.1f} {row['cpu_ms_per_img']:10.1f} {row['peak_rss_mb']:11.1f} "
            f"{row['bursts_quiet']:>3}/{row['bursts']}"
        )
    print(
        f"ratio = median over rounds of (arm img/s / {floor_name} img/s in the same round); "
        "target >= 0.90 for the service at concurrency 2-4. cpu = all the arm's processes "
        "(service: server + client). quiet = bursts during which other processes used <= "
        f"{args.noise_limit} cores; only those count when there are any."
    )
    loaded = [
        r["ratio"]
        for n, r in summary.items()
        if n.startswith("service c") and 2 <= int(n.removeprefix("service c")) <= 4
    ]
    if loaded:
        print(f"B1: lowest service ratio at concurrency 2-4: {min(loaded):.3f} (target >= 0.90)")
    if "service c1" in summary:
        overhead = summary["service c1"]["p50_ms"] - summary[floor_name]["p50_ms"]
        print(
            f"p50 latency overhead at concurrency 1 (service c1 round trip - {floor_name} "
            f"processing time): {overhead:+.1f} ms (target <= +3 ms)"
        )
    noisy = [n for n, r in summary.items() if r["bursts_quiet"] == 0]
    if noisy:
        print(
            f"WARNING: no quiet burst for {', '.join(noisy)}: the machine was busy, treat those "
            "figures with care"
        )
    print(
        "peak RSS / floor peak RSS: "
        + ", ".join(f"{n} {r['rss_ratio']:.2f}" for n, r in summary.items() if "rss_ratio" in r)
        + "  (B10 target <= 1.5)"
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
            "warmup": args.warmup,
            "noise_limit": args.noise_limit,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "service_workers": args.service_workers,
            "floor_procs": args.floor_procs,
            "malloc_tuning": args.malloc_tuning,
            "layout": args.layout if args.arm_cpus is not None else "shared",
            "arm_cpus": sorted(args.arm_cpus) if args.arm_cpus is not None else None,
            "client_cpus": (
                sorted(args.client_cpus_set) if args.client_cpus_set is not None else None
            ),
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
    return 1 if check["mismatches"] or errors else 0


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
        "--corpus", type=Path, default=None, help="folder of JPEGs (default: build bench/corpus/)"
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
        default="on",
        help="the service's glibc malloc policy (imagesvc.memory), applied to every arm alike",
    )
    # internal roles
    parser.add_argument("--role", choices=("floor", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role is not None and args.malloc_tuning == "on":
        from imagesvc.memory import tune_malloc  # light: the floor stays a pyvips-only process

        tune_malloc()
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
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
