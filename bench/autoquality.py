"""Autoquality evidence: encodes per image, accuracy and bytes of the quality search, and the
DSSIM's speed (issue 9; bench/README.md "Autoquality").

For each photo (``photos-12mp`` fitted into 720x720 by default), format (jpeg, webp, avif) and
method (dssim, size):

* the search (``imagesvc.encoding.search``, with one ``GuessHistory`` per run, as a server
  keeps): encodes per image, whether it ended within ``allowed_error`` of the target;
* fixed quality 80: its bytes and wall time (one encode);
* the exhaustive optimum: every quality in [min, max] tried, the lowest meeting the DSSIM
  target (DSSIM <= target + allowed_error) or the highest fitting the size target;
* bytes of the search's answer relative to q80 and to the optimum, wall time relative to q80.

AVIF searches at effort 0 and encodes the answer once at the final effort (``--avif-effort``,
the service's default 2); its exhaustive sweep runs at effort 0 too (a sweep at effort 2 takes
~7 min on 2 cores) and the optimum's bytes are those of the optimum quality encoded at the
final effort.

``--dssim-only`` runs just the DSSIM timing: a 720x588 photo on one CPU (affinity set,
VIPS_CONCURRENCY=1), the measure of an in-memory decoded JPEG q75, the same from the bytes
(decode included), and the reference's construction; min and median CPU ms over repetitions.

    .venv/bin/python bench/autoquality.py [--corpus photos-12mp|photos] [--limit N]
        [--formats jpeg,webp,avif] [--methods dssim,size] [--range 30:95]
        [--dssim-target 0.012] [--dssim-error 0.001] [--size-bpp 0.8] [--size-error 0.05]
        [--dssim-only] [--cpu 0]

Prints a table and writes bench/results/autoquality-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VIPS_CONCURRENCY", "1")
os.environ.setdefault("VIPS_WARNING", "0")

import pyvips  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from photos import build  # noqa: E402  (bench/ is sys.path[0] when run as a script)

from imagesvc.encoding import sample as sampling  # noqa: E402
from imagesvc.encoding.dssim import DssimReference  # noqa: E402
from imagesvc.encoding.savers import quality_step  # noqa: E402
from imagesvc.encoding.search import GuessHistory  # noqa: E402
from imagesvc.memory import apply_policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FIXED_QUALITY = 80


def encoder(fmt: str, image: pyvips.Image, effort: int | None = None):
    if fmt == "jpeg":
        return lambda q: image.jpegsave_buffer(Q=q, optimize_coding=True, keep="none")
    if fmt == "webp":
        return lambda q: image.webpsave_buffer(Q=q, effort=4, keep="none")
    if fmt == "avif":
        return lambda q: image.heifsave_buffer(Q=q, compression="av1", effort=effort, keep="none")
    raise ValueError(fmt)


def load(path: Path, box: int) -> pyvips.Image:
    image = pyvips.Image.thumbnail(str(path), box, height=box, size="down")
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    return image.cast("uchar").copy_memory()


def cpu_ms(fn, repeat: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1e3)
    return min(times), statistics.median(times)


def dssim_timing(cpu: int, repeat: int = 50) -> dict:
    os.sched_setaffinity(0, {cpu})
    path = build("photos-12mp", log=lambda *_: None)[14]  # motorcycle_left, 3:2
    image = pyvips.Image.new_from_file(str(path))
    image = image.resize(720 / image.width, vscale=588 / image.height).cast("uchar")
    image = image.copy_memory()
    data = image.jpegsave_buffer(Q=75, optimize_coding=True, keep="none")
    decoded = pyvips.Image.new_from_buffer(data, "").copy_memory()
    reference = DssimReference(image)
    out = {"image": f"{path.name} resized to {image.width}x{image.height}", "cpu": cpu}
    out["dssim"] = reference.dssim(decoded)
    for name, fn in (
        ("measure_ms", lambda: reference.dssim(decoded)),
        ("decode_and_measure_ms", lambda: reference.dssim_of(data)),
        ("reference_ms", lambda: DssimReference(image)),
        ("jpeg_q75_encode_ms", lambda: image.jpegsave_buffer(Q=75, optimize_coding=True)),
    ):
        low, median = cpu_ms(fn, repeat)
        out[name] = {"min": round(low, 2), "median": round(median, 2)}
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return out


class Clock:
    """CPU seconds (this process, every thread) spent in the wrapped calls."""

    def __init__(self):
        self.cpu = 0.0
        self.calls = 0

    def wrap(self, fn):
        def timed(*a):
            start = time.process_time()
            try:
                return fn(*a)
            finally:
                self.cpu += time.process_time() - start
                self.calls += 1

        return timed


def run_one(fmt, method, image, args, history, low, high) -> dict:
    search_enc = encoder(fmt, image, effort=0)
    final_enc = encoder(fmt, image, effort=args.avif_effort) if fmt == "avif" else None
    trial_clock, estimate_clock = Clock(), Clock()
    fixed_enc = final_enc or search_enc
    pixels = image.width * image.height
    if method == "dssim":
        target, error = args.dssim_target, args.dssim_error
    else:
        target, error = args.size_bpp * pixels / 8, args.size_error

    start = time.perf_counter()
    fixed = fixed_enc(FIXED_QUALITY)
    fixed_s = time.perf_counter() - start

    key = GuessHistory.key(fmt, image.width, image.height, method)
    scale = 1.0 if method == "dssim" else float(pixels)
    start = time.perf_counter()
    measure_s = 0.0
    if method == "dssim":
        reference = DssimReference(image)

        def measure(data: bytes) -> float:
            nonlocal measure_s
            t = time.perf_counter()
            value = reference.dssim_of(data)
            measure_s += time.perf_counter() - t
            return value
    else:
        measure = len
    # The trials' CPU: the encode and its measure (for sizes the measure is len).
    trial_measure = trial_clock.wrap(measure)
    timed_enc = trial_clock.wrap(search_enc)
    options = {}
    estimator = None
    if not args.no_estimate:
        # The sample mosaic, its reference (DSSIM) and every estimate: all on estimate_clock.
        start_cpu = time.process_time()
        estimator = sampling.estimator(
            image, method, lambda img, q: encoder(fmt, img, effort=0)(q), fixed_key=(fmt, 0)
        )
        estimate_clock.cpu += time.process_time() - start_cpu
        if estimator is not None:
            options = dict(estimate=estimate_clock.wrap(estimator), estimate_cost=estimator.cost)
    result = history.search(
        key,
        timed_enc,
        trial_measure if method == "dssim" else len,
        kind=method,
        scale=scale,
        target=target,
        low=low,
        high=high,
        allowed_error=error,
        final=final_enc,
        quality_step=quality_step(fmt),
        **options,
    )
    search_s = time.perf_counter() - start

    # The exhaustive optimum (not timed).
    sweep = {}
    reference = DssimReference(image) if method == "dssim" else None
    for q in range(low, high + 1):
        data = search_enc(q)
        sweep[q] = (len(data), reference.dssim_of(data) if reference else float(len(data)))
    if method == "dssim":
        meeting = [q for q in sweep if sweep[q][1] <= target + error]
        optimum = min(meeting) if meeting else high
    else:
        meeting = [q for q in sweep if sweep[q][0] <= target]
        optimum = max(meeting) if meeting else low
    optimum_bytes = len(final_enc(optimum)) if final_enc else sweep[optimum][0]
    return {
        "format": fmt,
        "method": method,
        "target": target,
        "allowed_error": error,
        "quality": result.quality,
        "encodes": result.encodes,
        "estimates": len(result.estimates),
        "estimate_share": estimator.cost if estimator is not None else 0.0,
        "estimate_tiles": estimator.sample.tiles if estimator is not None else 0,
        "estimate_cost": result.estimate_cost,
        "estimate_cpu_s": estimate_clock.cpu,
        "trial_cpu_s": trial_clock.cpu,
        "trial_encodes": result.encodes - (final_enc is not None),
        "estimate_trials": result.estimates,
        "achieved": result.achieved,
        "within": result.within,
        "target_met": result.target_met,
        "limited": result.limited,
        "trials": result.trials,
        "bytes": len(result.data),
        "bytes_q80": len(fixed),
        "optimum_quality": optimum,
        "optimum_met": bool(meeting),
        "optimum_bytes": optimum_bytes,
        "search_s": search_s,
        "measure_s": measure_s,
        "fixed_s": fixed_s,
    }


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for method in ("dssim", "size"):
        for fmt in ("jpeg", "webp", "avif"):
            sel = [r for r in rows if r["format"] == fmt and r["method"] == method]
            if not sel:
                continue
            reachable = [r for r in sel if r["optimum_met"]]
            table.append(
                {
                    "method": method,
                    "format": fmt,
                    "images": len(sel),
                    "encodes_mean": statistics.mean(r["encodes"] for r in sel),
                    "encodes_max": max(r["encodes"] for r in sel),
                    "estimates_mean": statistics.mean(r["estimates"] for r in sel),
                    # The estimates' cost in encodes: by their share of the pixels, and by CPU
                    # time against the mean trial (encode + measure) of the same rows.
                    "estimate_cost_pixels": statistics.mean(r["estimate_cost"] for r in sel),
                    "estimate_cost_cpu": (
                        sum(r["estimate_cpu_s"] for r in sel)
                        / (
                            sum(r["trial_cpu_s"] for r in sel)
                            / max(1, sum(r["trial_encodes"] for r in sel))
                        )
                        / len(sel)
                    ),
                    "within_share": sum(r["within"] for r in sel) / len(sel),
                    "met_share": sum(r["target_met"] for r in sel) / len(sel),
                    "reachable": len(reachable),
                    "bytes_vs_q80": sum(r["bytes"] for r in sel) / sum(r["bytes_q80"] for r in sel),
                    "bytes_vs_optimum": sum(r["bytes"] for r in sel)
                    / sum(r["optimum_bytes"] for r in sel),
                    "same_quality_as_optimum": sum(
                        r["quality"] == r["optimum_quality"] for r in sel
                    )
                    / len(sel),
                    "wall_vs_q80": sum(r["search_s"] for r in sel) / sum(r["fixed_s"] for r in sel),
                    "dssim_ms_per_measure": (
                        1e3
                        * sum(r["measure_s"] for r in sel)
                        / max(1, sum(r["encodes"] - (fmt == "avif") for r in sel))
                        if method == "dssim"
                        else None
                    ),
                }
            )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="photos-12mp", choices=("photos-12mp", "photos"))
    parser.add_argument("--box", type=int, default=720)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument(
        "--offset", type=int, default=0, help="skip the corpus' first N photos (hold-out halves)"
    )
    parser.add_argument(
        "--no-estimate", action="store_true", help="search without the sample mosaic's estimate"
    )
    parser.add_argument("--formats", default="jpeg,webp,avif")
    parser.add_argument("--methods", default="dssim,size")
    parser.add_argument("--range", default="30:95", help="min:max quality for every format")
    parser.add_argument("--dssim-target", type=float, default=0.012)
    parser.add_argument("--dssim-error", type=float, default=0.001)
    parser.add_argument("--size-bpp", type=float, default=0.8, help="size target, bits/pixel")
    parser.add_argument("--size-error", type=float, default=0.05, help="fraction of the target")
    parser.add_argument("--avif-effort", type=int, default=2)
    parser.add_argument("--dssim-only", action="store_true")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU for the DSSIM timing")
    args = parser.parse_args()
    pyvips.cache_set_max(0)
    apply_policy()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    timing = dssim_timing(args.cpu)
    print(
        f"DSSIM at {timing['image']}, CPU {args.cpu}, VIPS_CONCURRENCY="
        f"{os.environ['VIPS_CONCURRENCY']}: measure {timing['measure_ms']['min']} ms min / "
        f"{timing['measure_ms']['median']} median; with decode "
        f"{timing['decode_and_measure_ms']['min']} / {timing['decode_and_measure_ms']['median']}; "
        f"reference {timing['reference_ms']['min']} / {timing['reference_ms']['median']}; "
        f"(a JPEG q75 encode: {timing['jpeg_q75_encode_ms']['median']})"
    )
    record = {"time": stamp, "args": vars(args), "dssim_timing": timing}
    if not args.dssim_only:
        low, high = (int(v) for v in args.range.split(":"))
        paths = build(args.corpus, log=lambda *_: None)
        paths = paths[args.offset :]
        if args.limit:
            paths = paths[: args.limit]
        images = [(p.name, load(p, args.box)) for p in paths]
        rows = []
        for method in args.methods.split(","):
            for fmt in args.formats.split(","):
                history = GuessHistory()  # one per run, as one server keeps
                for name, image in images:
                    row = run_one(fmt, method, image, args, history, low, high)
                    row["image"] = f"{name} at {image.width}x{image.height}"
                    rows.append(row)
                    print(
                        f"  {method:5} {fmt:4} {name[:34]:34} q{row['quality']:<3} "
                        f"opt q{row['optimum_quality']:<3} encodes {row['encodes']} "
                        f"+ {row['estimates']} x {row['estimate_share']:.3f} "
                        f"achieved {row['achieved']:.4g} within {row['within']}",
                        flush=True,
                    )
        table = summarise(rows)
        record.update(rows=rows, table=table)
        print(
            f"\n{args.corpus} at {args.box} px, qualities {low}-{high}; dssim target "
            f"{args.dssim_target} ± {args.dssim_error}; size target {args.size_bpp} bpp "
            f"(-{args.size_error:.0%} .. 0); q80 and optimum at the final effort\n"
        )
        header = (
            "| method | format | images | encodes mean (max) | estimates: calls, cost (pixels; "
            "CPU) | total (CPU) | within | met | bytes/q80 | bytes/optimum | q = optimum "
            "| wall/q80 | DSSIM ms/measure |"
        )
        print(header)
        print("|" + "---|" * 13)
        for t in table:
            dssim_ms = f"{t['dssim_ms_per_measure']:.1f}" if t["dssim_ms_per_measure"] else "-"
            print(
                f"| {t['method']} | {t['format']} | {t['images']} | {t['encodes_mean']:.2f} "
                f"({t['encodes_max']}) | {t['estimates_mean']:.2f}, "
                f"{t['estimate_cost_pixels']:.2f}; {t['estimate_cost_cpu']:.2f} "
                f"| {t['encodes_mean'] + t['estimate_cost_cpu']:.2f} "
                f"| {t['within_share']:.0%} | {t['met_share']:.0%} "
                f"| {t['bytes_vs_q80']:.3f} | {t['bytes_vs_optimum']:.3f} "
                f"| {t['same_quality_as_optimum']:.0%} | {t['wall_vs_q80']:.2f} | {dssim_ms} |"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"autoquality-{stamp}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
