"""What object gravity costs over smart gravity, through the real service and the real Triton.

Job: ``resize`` fill 256x256, JPEG q80, on a corpus of camera-size JPEGs (``bench/corpus.py``,
``bench/photos.py``), once with ``gravity.object`` (``--classes``, default ``face``: the service
detects them through the Triton sidecar, then crops on them, or falls back to smart crop) and once with
``gravity.smart`` (libvips attention). One server (``python -m imagesvc.server``) serves both
arms; a real local Triton (``inference.sidecar``, CPU) serves its models. The client sends one
request at a time (concurrency 1) with pre-serialized requests.

The arms take turns in bursts of ``--n`` images, in an order that rotates by round, and the
ratio object / smart is taken per round (median over rounds, with its IQR), as in
``bench/throughput.py``: the VM's speed drifts within a minute. Per arm it reports p50 / p95
latency (the client's round trip), the server's CPU per image and Triton's (the sidecar
process and its model stubs), and from the server's metrics the Triton inferences and the
detection cache hits per image. The detection cache is off by default
(``--cache-entries 0``), so every object request pays for detection as a first request for
those bytes would; ``--cache-entries 1024`` measures repeated bytes instead.

    .venv/bin/python bench/object_gravity.py [--corpus synthetic|photos-12mp|DIR]
        [--n 24] [--rounds 8] [--workers 2] [--classes face] [--cache-entries 0]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from throughput import (  # noqa: E402  (bench/ is sys.path[0] as a script)
    MAX_MESSAGE,
    METHOD,
    corpus_files,
    free_port,
    percentile,
    proc_cpu_s,
    resolve_corpus,
)

ARMS = ("smart", "object")


def build_requests(files: list[Path], arm: str, classes: list[str]) -> list[bytes]:
    from imagesvc.v1 import image_service_pb2 as pb

    if arm == "object":
        gravity = pb.Gravity(object=pb.ObjectGravity(classes=classes))
    else:
        gravity = pb.Gravity(smart=pb.SmartGravity())
    resize = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=256, height=256, gravity=gravity)
    out = []
    for path in files:
        msg = pb.ProcessImageRequest(
            source=pb.ImageSource(data=path.read_bytes()),
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=resize)])],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, quality=80),
        )
        out.append(msg.SerializeToString())
    return out


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every process below it (Triton and its python stubs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += proc_cpu_s(pid)
        except (OSError, IndexError, ValueError):
            continue
        todo += children.get(pid, [])
    return total


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"inferences": 0.0, "cache_hits": 0.0, "degradations": 0.0}
    for line in text.splitlines():
        if line.startswith("imagesvc_inference_request_duration_seconds_count"):
            out["inferences"] += float(line.split()[-1])
        elif line.startswith("imagesvc_detection_cache_lookups_total") and 'result="hit"' in line:
            out["cache_hits"] += float(line.split()[-1])
        elif line.startswith("imagesvc_degradations_total{"):
            out["degradations"] += float(line.split()[-1])
        m = re.match(r'imagesvc_pipeline_step_duration_seconds_sum\{op="([^"]+)"\}\s+(\S+)', line)
        if m:
            out[f"step_{m.group(1)}_s"] = float(m.group(2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="synthetic")
    parser.add_argument("--n", type=int, default=24, help="images per burst")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cache-entries", type=int, default=0)
    parser.add_argument(
        "--classes", default="face", help="object gravity's classes, comma-separated; '': all"
    )
    parser.add_argument("--warmup", type=int, default=0, help="default: one pass per arm")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import grpc

    from inference.sidecar import TritonSidecar

    name, folder = resolve_corpus(args.corpus)
    files = corpus_files(folder)
    classes = [c for c in args.classes.split(",") if c]
    payloads = {arm: build_requests(files, arm, classes) for arm in ARMS}
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = open(results_dir / f"object-gravity-server-{stamp}.log", "a")
    with TritonSidecar(grpc_port=0) as sidecar:
        port, metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "IMAGESVC_PORT": str(port),
            "IMAGESVC_METRICS_PORT": str(metrics_port),
            "IMAGESVC_WORKERS": str(args.workers),
            "IMAGESVC_TRITON_URL": sidecar.grpc_url,
            "IMAGESVC_DETECTION_CACHE_ENTRIES": str(args.cache_entries),
            "IMAGESVC_LOG_LEVEL": "warning",
            "IMAGESVC_DRAIN_S": "0",
            "IMAGESVC_GRACE_PERIOD_S": "1",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "imagesvc.server"], cwd=Path.cwd(), env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        call = channel.unary_unary(METHOD)
        try:
            started = time.monotonic()
            while True:  # the server is up once a smart request goes through
                try:
                    call(payloads["smart"][0], timeout=10)
                    break
                except grpc.RpcError:
                    if server.poll() is not None or time.monotonic() - started > 120:
                        raise SystemExit(f"server did not start; see {log.name}") from None
                    time.sleep(0.3)
            warmup = args.warmup or len(files)
            for arm in ARMS:
                for i in range(warmup):
                    call(payloads[arm][i % len(files)], timeout=30)
            bursts: dict[str, list[dict]] = {arm: [] for arm in ARMS}
            offset = 0
            for round_ in range(args.rounds):
                order = ARMS if round_ % 2 == 0 else ARMS[::-1]
                for arm in order:
                    before = scrape(metrics_port)
                    cpu0, triton0 = proc_cpu_s(server.pid), process_tree_cpu_s(sidecar.pid)
                    latencies = []
                    for i in range(args.n):
                        payload = payloads[arm][(offset + i) % len(files)]
                        t0 = time.perf_counter()
                        call(payload, timeout=30)
                        latencies.append(time.perf_counter() - t0)
                    cpu = proc_cpu_s(server.pid) - cpu0
                    triton = process_tree_cpu_s(sidecar.pid) - triton0
                    after = scrape(metrics_port)
                    bursts[arm].append(
                        {
                            "p50_ms": percentile(latencies, 0.5) * 1000,
                            "p95_ms": percentile(latencies, 0.95) * 1000,
                            "server_cpu_ms": cpu / args.n * 1000,
                            "triton_cpu_ms": triton / args.n * 1000,
                            **{k: (after[k] - before.get(k, 0.0)) / args.n for k in after},
                        }
                    )
                offset += args.n
        finally:
            channel.close()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()

    def med(arm: str, key: str) -> float:
        return statistics.median(b[key] for b in bursts[arm])

    pairs = list(zip(bursts["object"], bursts["smart"], strict=True))
    ratios = sorted(o["p50_ms"] / s["p50_ms"] for o, s in pairs)
    cpu_ratios = sorted(o["server_cpu_ms"] / s["server_cpu_ms"] for o, s in pairs)
    q = lambda values, p: percentile(values, p)  # noqa: E731
    print(
        f"\ncorpus {name} ({len(files)} files), {args.rounds} rounds x {args.n} images per arm, "
        f"concurrency 1, {args.workers} worker(s), detection cache {args.cache_entries}, "
        f"classes {args.classes or 'all'}"
    )
    header = (
        f"{'arm':8s} {'p50 ms':>7s} {'p95 ms':>7s} {'server CPU ms':>14s} {'Triton CPU ms':>14s}"
    )
    print(header + f" {'inferences':>10s} {'cache hits':>10s} {'degraded':>8s}")
    for arm in ARMS:
        print(
            f"{arm:8s} {med(arm, 'p50_ms'):7.1f} {med(arm, 'p95_ms'):7.1f} "
            f"{med(arm, 'server_cpu_ms'):14.1f} {med(arm, 'triton_cpu_ms'):14.1f} "
            f"{med(arm, 'inferences'):10.2f} {med(arm, 'cache_hits'):10.2f} "
            f"{med(arm, 'degradations'):8.2f}"
        )
    print(
        f"object / smart p50: {statistics.median(ratios):.2f} "
        f"(IQR {q(ratios, 0.25):.2f}-{q(ratios, 0.75):.2f}); server CPU: "
        f"{statistics.median(cpu_ratios):.2f}; extra server CPU per image: "
        f"{med('object', 'server_cpu_ms') - med('smart', 'server_cpu_ms'):+.1f} ms"
    )
    steps = sorted(k for k in bursts["object"][0] if k.startswith("step_"))
    print("object arm, mean server time per image by step (ms):")
    for key in steps:
        print(
            f"  {key[5:-2]:16s} {med('object', key) * 1000:6.1f}   smart: {med('smart', key) * 1000:6.1f}"
        )
    record = {"corpus": name, "args": {k: str(v) for k, v in vars(args).items()}, "bursts": bursts}
    path = args.json or results_dir / f"object-gravity-{stamp}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
