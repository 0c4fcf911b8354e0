"""Autoquality by ML against the DSSIM method, on the held-out split (issue 10; bench/README.md
"Autoquality by ML").

The images are the training corpus' held-out samples (the whole mate-backgrounds package,
168 samples of 160-1920 px; ``inference/training/autoquality/gather.py`` makes them, ~30 s),
which the model never saw. Each goes through the service's own encoder
(``imagesvc.encoding.encoder.encode_output``) three times per format and target:

* ``dssim``: the DSSIM method as the service runs it (sample mosaic estimate, GuessHistory);
* ``ml``: the ML method, the curves asked of the real local Triton (``inference.sidecar``)
  through the service's client (``inference.autoquality_client``) and predictor
  (``imagesvc.encoding.ml.TritonQualityPredictor``), checked and corrected by DSSIM;
* ``ml-trusted``: ML with allowed_error 1 (one encode, no DSSIM); its DSSIM is measured
  afterwards, outside the timing, to report how often the model alone lands in the band.

Per row: encodes (mean, max), within (|DSSIM - target| <= allowed error; also among the images
where some quality in range lands there, "attainable"), met (DSSIM <= target + allowed error), predicted = final quality, bytes against the DSSIM method's, and CPU
time of the encoder call against the DSSIM method's (Triton's own CPU is in its process and is
not counted; the wait for its answer per call is reported). Wall time is against one encode at
quality 80 and against that encode with one DSSIM check (the baseline of a checked method).

    .venv/bin/python inference/training/autoquality/gather.py     # once
    .venv/bin/python bench/autoquality_ml.py [--targets 0.01,0.02,0.03] [--range 30:95]
        [--formats jpeg,webp,avif] [--limit N] [--split held_out|train]

Prints a table and writes bench/results/autoquality-ml-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VIPS_CONCURRENCY", "1")
os.environ.setdefault("VIPS_WARNING", "0")

import pyvips  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagesvc.encoding.dssim import DssimReference  # noqa: E402
from imagesvc.encoding.encoder import encode_output  # noqa: E402
from imagesvc.encoding.ml import TritonQualityPredictor  # noqa: E402
from imagesvc.encoding.search import GuessHistory  # noqa: E402
from imagesvc.encoding.spec import EncodingSpec  # noqa: E402
from imagesvc.memory import apply_policy  # noqa: E402
from imagesvc.options import OutputSpec  # noqa: E402
from imagesvc.settings import Settings  # noqa: E402
from inference.autoquality_client import QualityPredictor  # noqa: E402
from inference.sidecar import TritonSidecar  # noqa: E402

DATA = ROOT / "inference" / "training" / "autoquality" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("dssim", "ml", "ml-trusted")


def samples(split: str, limit: int) -> list[tuple[str, pyvips.Image]]:
    index = DATA / "samples.json"
    if not index.exists():
        raise SystemExit(
            f"{index} is missing: run .venv/bin/python inference/training/autoquality/gather.py"
        )
    records = [s for s in json.loads(index.read_text())["samples"] if s["split"] == split]
    if limit:  # evenly spread: the samples come in source order (graphics, then photos)
        records = records[:: max(1, len(records) // limit)][:limit]
    out = []
    for record in records:
        image = pyvips.Image.new_from_file(str(DATA / "samples" / f"{record['id']}.png"))
        out.append((f"{record['id']} {record['package']}", image.copy_memory()))
    return out


def output(fmt: str, method: str, target: float, error: float, low: int, high: int):
    base = EncodingSpec.from_settings(Settings())
    aq = replace(
        base.autoquality,
        method="ml" if method.startswith("ml") else method,
        target=target,
        allowed_error=1.0 if method == "ml-trusted" else error,
        ranges=tuple((f, low, high) for f in ("jpeg", "webp", "avif")),
        max_resolution_mp=0.0,
    )
    return OutputSpec(fmt, None, encoding=replace(base, autoquality=aq))


class Loop:
    """An event loop on a thread of its own, as the server's (the encoder runs beside it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def run(args) -> dict:
    low, high = (int(v) for v in args.range.split(":"))
    targets = [float(t) for t in args.targets.split(",")]
    formats = args.formats.split(",")
    images = samples(args.split, args.limit)
    settings = Settings()
    rows = []
    triton_s: list[float] = []
    with TritonSidecar() as sidecar:
        loop = Loop()
        client = QualityPredictor(sidecar.grpc_url, timeout_s=5.0)
        if not loop.run(client.ready()):
            raise SystemExit(f"the autoquality model is not ready: {client.not_ready_reason}")
        version = client.version
        try:
            for target in targets:
                for fmt in formats:
                    histories = {m: GuessHistory() for m in METHODS}
                    for name, image in images:
                        reference = DssimReference(image)
                        fixed_s, fixed_bytes, checked_s = fixed(image, fmt, settings)
                        dssim_row = None
                        for method in METHODS:
                            predictor = TritonQualityPredictor(
                                client,
                                loop.loop,
                                time.monotonic() + 60,
                                on_prediction=lambda v, s: triton_s.append(s),
                            )
                            out = output(fmt, method, target, args.error, low, high)
                            start = time.process_time()
                            wall = time.perf_counter()
                            result = encode_output(
                                image,
                                out,
                                "png",
                                None,
                                settings,
                                history=histories[method],
                                predictor=predictor if method != "dssim" else None,
                            )
                            cpu = time.process_time() - start
                            wall = time.perf_counter() - wall
                            report = result.report
                            achieved = reference.dssim_of(result.data)
                            row = {
                                "image": name,
                                "size": [image.width, image.height],
                                "format": fmt,
                                "target": target,
                                "method": method,
                                "method_used": report.method,
                                "degradations": [r for r, _ in result.degradations],
                                "quality": report.quality,
                                "predicted_quality": report.predicted_quality,
                                "encodes": report.encodes,
                                "dssim": achieved,
                                "within": abs(achieved - target) <= args.error,
                                "met": achieved <= target + args.error,
                                "bytes": len(result.data),
                                "cpu_s": cpu,
                                "wall_s": wall,
                                "fixed_s": fixed_s,
                                "fixed_checked_s": checked_s,
                                "bytes_q80": fixed_bytes,
                            }
                            if method == "dssim":
                                dssim_row = row
                                best_q, best_bytes, met, attainable = optimum(
                                    image,
                                    fmt,
                                    target,
                                    args.error,
                                    report.quality,
                                    low,
                                    high,
                                    reference,
                                    settings,
                                )
                            row["optimum_quality"], row["optimum_bytes"] = best_q, best_bytes
                            row["optimum_met"] = met
                            row["attainable"] = attainable
                            row["bytes_vs_dssim"] = row["bytes"] / dssim_row["bytes"]
                            row["cpu_vs_dssim"] = cpu / max(dssim_row["cpu_s"], 1e-9)
                            rows.append(row)
                        print(
                            f"  {target} {fmt:4} {name[:28]:28} "
                            + " ".join(
                                f"{r['method']}:q{r['quality']}({r['predicted_quality']})"
                                f"x{r['encodes']}"
                                for r in rows[-len(METHODS) :]
                            ),
                            flush=True,
                        )
        finally:
            loop.run(client.close())
            loop.stop()
    table = []
    for target in targets:
        for fmt in formats:
            for method in METHODS:
                sel = [
                    r
                    for r in rows
                    if r["target"] == target and r["format"] == fmt and r["method"] == method
                ]
                if not sel:
                    continue
                # Targets outside [low, high] for the image: no method can be within.
                reachable = [r for r in sel if r["within"] or r["quality"] not in (low, high)]
                # Some quality in range lands within the allowed error (the exhaustive walk).
                attainable = [r for r in sel if r["attainable"]]
                table.append(
                    {
                        "target": target,
                        "format": fmt,
                        "method": method,
                        "images": len(sel),
                        "degraded": sum(bool(r["degradations"]) for r in sel),
                        "encodes_mean": statistics.mean(r["encodes"] for r in sel),
                        "encodes_max": max(r["encodes"] for r in sel),
                        "within": sum(r["within"] for r in sel) / len(sel),
                        "within_reachable": (
                            sum(r["within"] for r in reachable) / len(reachable)
                            if reachable
                            else None
                        ),
                        "within_attainable": (
                            sum(r["within"] for r in attainable) / len(attainable)
                            if attainable
                            else None
                        ),
                        "attainable": len(attainable),
                        "met": sum(r["met"] for r in sel) / len(sel),
                        "predicted_is_final": (
                            sum(r["quality"] == r["predicted_quality"] for r in sel) / len(sel)
                            if method != "dssim"
                            else None
                        ),
                        "bytes_vs_dssim": sum(r["bytes"] for r in sel)
                        / sum(r2["bytes"] for r2 in rows_of(rows, target, fmt, "dssim")),
                        "cpu_vs_dssim": sum(r["cpu_s"] for r in sel)
                        / sum(r2["cpu_s"] for r2 in rows_of(rows, target, fmt, "dssim")),
                        "bytes_vs_optimum": sum(r["bytes"] for r in sel)
                        / sum(r["optimum_bytes"] for r in sel),
                        "wall_vs_fixed": sum(r["wall_s"] for r in sel)
                        / sum(r["fixed_s"] for r in sel),
                        "wall_vs_fixed_checked": sum(r["wall_s"] for r in sel)
                        / sum(r["fixed_checked_s"] for r in sel),
                        "predicted_mae_vs_optimum": (
                            statistics.mean(
                                abs(r["predicted_quality"] - r["optimum_quality"])
                                for r in sel
                                if r["optimum_met"]
                            )
                            if method != "dssim" and any(r["optimum_met"] for r in sel)
                            else None
                        ),
                    }
                )
    return {
        "model_version": version,
        "split": args.split,
        "images": len(images),
        "triton_ms_median": 1e3 * statistics.median(triton_s) if triton_s else None,
        "rows": rows,
        "table": table,
    }


def encode_fixed(image, fmt, quality, settings):
    return encode_output(image, OutputSpec(fmt, quality), "png", None, settings).data


def fixed(image, fmt, settings) -> tuple[float, int, float]:
    """Wall seconds and bytes of one encode at quality 80, and wall seconds of that encode with
    its DSSIM checked (the reference built, the file decoded and compared, as the service's
    check does): the fastest of 3 each."""
    times, checked = [], []
    for _ in range(3):
        start = time.perf_counter()
        data = encode_fixed(image, fmt, 80, settings)
        times.append(time.perf_counter() - start)
        DssimReference(image).dssim_of(data)
        checked.append(time.perf_counter() - start)
    return min(times), len(data), min(checked)


def optimum(image, fmt, target, error, start, low, high, reference, settings):
    """The lowest quality whose DSSIM <= target + error (at the returned effort), found by
    walking from ``start`` (the DSSIM method's answer) on a curve assumed monotone there:
    (quality, bytes, whether any quality in range meets it, whether one lands within the
    allowed error: on a monotone curve, the optimum's DSSIM >= target - error, since every
    quality below it is over the band and every one above it is at or under its DSSIM)."""
    cache = {}

    def at(q):
        if q not in cache:
            data = encode_fixed(image, fmt, q, settings)
            cache[q] = (len(data), reference.dssim_of(data))
        return cache[q]

    def meets(q):
        return at(q)[1] <= target + error

    q = start
    if meets(q):
        while q > low and meets(q - 1):
            q -= 1
    else:
        while q < high and not meets(q):
            q += 1
    size, dssim = at(q)
    met = dssim <= target + error
    return q, size, met, met and dssim >= target - error


def rows_of(rows, target, fmt, method):
    return [
        r for r in rows if r["target"] == target and r["format"] == fmt and r["method"] == method
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="held_out", choices=("held_out", "train"))
    parser.add_argument("--targets", default="0.01,0.02,0.03")
    parser.add_argument("--error", type=float, default=0.001)
    parser.add_argument("--range", default="30:95")
    parser.add_argument("--formats", default="jpeg,webp,avif")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    pyvips.cache_set_max(0)
    apply_policy()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"time": stamp, "args": vars(args), **run(args)}
    print(
        f"\n{record['images']} {args.split} samples, model {record['model_version']}, "
        f"qualities {args.range}, allowed error {args.error}; wait for the Triton "
        f"answer median {record['triton_ms_median']:.1f} ms (wall)\n"
    )
    print(
        "| target | format | method | encodes mean (max) | within | within (reachable) "
        "| within (attainable, n) | met "
        "| predicted = final | predicted vs optimum (MAE, q) | bytes / optimum | bytes / dssim "
        "| wall / q80 | wall / (q80 + check) | CPU / dssim | degraded |"
    )
    print("|" + "---|" * 16)
    for t in record["table"]:
        reach = f"{t['within_reachable']:.0%}" if t["within_reachable"] is not None else "-"
        attain = (
            f"{t['within_attainable']:.0%} ({t['attainable']})"
            if t["within_attainable"] is not None
            else "-"
        )
        kept = f"{t['predicted_is_final']:.0%}" if t["predicted_is_final"] is not None else "-"
        mae = t["predicted_mae_vs_optimum"]
        mae = f"{mae:.1f}" if mae is not None else "-"
        print(
            f"| {t['target']} | {t['format']} | {t['method']} | {t['encodes_mean']:.2f} "
            f"({t['encodes_max']}) | {t['within']:.0%} | {reach} | {attain} | {t['met']:.0%} "
            f"| {kept} "
            f"| {mae} | {t['bytes_vs_optimum']:.3f} | {t['bytes_vs_dssim']:.3f} "
            f"| {t['wall_vs_fixed']:.2f} | {t['wall_vs_fixed_checked']:.2f} "
            f"| {t['cpu_vs_dssim']:.2f} | {t['degraded']} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"autoquality-ml-{stamp}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
