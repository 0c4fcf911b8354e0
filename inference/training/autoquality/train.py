"""Train, evaluate and export the autoquality model (the quality -> DSSIM curve per format).

    python3 inference/training/autoquality/train.py cv       # compare model families (LOPO)
    python3 inference/training/autoquality/train.py fit      # train, report, export
    python3 inference/training/autoquality/train.py check    # the exported ONNX vs the report

Run ``gather.py`` and ``label.py`` first (they need the service's venv, .venv). This script
needs only numpy and the training packages: it creates its own venv, ``.venv`` beside it, from
``requirements.txt`` (pinned, ``pip install --no-deps``) on first use and re-runs itself
there; ``make run`` / ``make test`` never install any of it.

The model: per format, ``log(DSSIM)`` at every quality of the grid (``label.GRID``) from the
features of `inference.autoquality` - a small multilayer perceptron ensemble on standardised
features and standardised targets, all formats at once. The exported ONNX graph holds the
whole computation (scaling, the members, their mean, unscaling) and makes each predicted
curve non-increasing (a curve's first value plus the running sum of its non-positive steps),
so that any target inverts it (`inference.autoquality.quality_for`).

Evaluation (``report.json``, README): the held-out split is a whole source package
(``gather.HELD_OUT``); the figures on the training split are in-sample. ``cv`` reports
leave-one-package-out figures over the training packages, the basis for choosing the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
DATA = HERE / "data"
LABELS_NPZ = DATA / "labels.npz"
REPORT = HERE / "report.json"
MODEL_NAME = "autoquality"
REPOSITORY = REPO_ROOT / "model_repository"
MODEL_DIR = REPOSITORY / MODEL_NAME

SEED = 20261201
MEMBERS = 5  # MLPs in the ensemble (seeds SEED..SEED+4)
HIDDEN = (64, 64)
ALPHA = 0.3  # L2 penalty (scikit-learn's alpha), chosen by `cv`
TARGETS = (0.01, 0.02, 0.03)
ALLOWED_ERROR = 0.001
LOW, HIGH = 15, 95  # the qualities the simulation may use (the grid's range)
LOG_FLOOR = math.log(1e-6)
# The model's contract (config.pbtxt, curve.json); MODEL_VERSION changes with the contract or
# the recipe, the hash suffix with the weights.
MODEL_VERSION = "aq1"
INPUT_NAME = "features"
OUTPUT_NAME = "log_dssim"
MAX_BATCH_SIZE = 8  # best format asks for every candidate format of one image in one call
OPSET = 13
IR_VERSION = 7  # as the MediaPipe exports: loadable by stock Triton 24.10's onnxruntime
GENERATOR = "inference/training/autoquality/train.py"


# --- the training venv ----------------------------------------------------------------------


def ensure_venv(
    argv: list[str],
    venv: Path = VENV,
    requirements: Path = REQUIREMENTS,
    script: Path = Path(__file__),
) -> None:
    """Re-run ``script`` in ``venv``, creating it from ``requirements`` (pinned, --no-deps)
    first when it is missing or was made from other requirements."""
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    if not python.is_file() or not stamp.is_file() or stamp.read_text() != requirements.read_text():
        print(f"creating {venv.relative_to(REPO_ROOT)} from {requirements.name}", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(requirements)],
            check=True,
        )
        shutil.copyfile(requirements, stamp)
    os.execv(str(python), [str(python), str(Path(script).resolve()), *argv])


# --- data -----------------------------------------------------------------------------------


def load_labels(path: Path = LABELS_NPZ) -> dict:
    import numpy as np

    data = dict(np.load(path))
    data["log_dssim"] = np.log(np.maximum(data["dssim"], 1e-6))
    data["formats"] = [str(f) for f in data["formats"]]
    data["grid"] = [int(q) for q in data["grid"]]
    return data


# --- models ---------------------------------------------------------------------------------


class Scaler:
    def fit(self, x):
        import numpy as np

        self.mean = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
        return self

    def __call__(self, x):
        return (x - self.mean) / self.scale

    def inverse(self, z):
        return z * self.scale + self.mean


class CurveModel:
    """Features -> log DSSIM [formats, grid], all formats at once (targets flattened)."""

    def __init__(self, kind: str = "mlp", seed: int = SEED, **options):
        self.kind, self.seed, self.options = kind, seed, options

    def _estimators(self):
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.linear_model import Ridge
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.neural_network import MLPRegressor

        o = self.options
        if self.kind == "ridge":
            return [Ridge(alpha=o.get("alpha", 1.0))]
        if self.kind == "knn":
            return [KNeighborsRegressor(n_neighbors=o.get("k", 7), weights="distance")]
        if self.kind == "trees":
            return [
                ExtraTreesRegressor(
                    n_estimators=o.get("trees", 200),
                    min_samples_leaf=o.get("leaf", 3),
                    max_features=o.get("max_features", 0.5),
                    random_state=self.seed,
                    n_jobs=1,
                )
            ]
        if self.kind == "mlp":
            return [
                MLPRegressor(
                    hidden_layer_sizes=o.get("hidden", HIDDEN),
                    activation="relu",
                    solver="lbfgs",
                    alpha=o.get("alpha", ALPHA),
                    max_iter=o.get("max_iter", 3000),
                    tol=1e-6,
                    random_state=self.seed + member,
                )
                for member in range(o.get("members", MEMBERS))
            ]
        raise ValueError(self.kind)

    def fit(self, x, y):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        self.shape = y.shape[1:]
        flat = y.reshape(len(y), -1)
        self.x_scaler = Scaler().fit(x)
        self.y_scaler = Scaler().fit(flat)
        self.estimators = self._estimators()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for estimator in self.estimators:
                estimator.fit(self.x_scaler(x), self.y_scaler(flat))
        return self

    def predict(self, x):
        import numpy as np

        z = np.mean([e.predict(self.x_scaler(x)) for e in self.estimators], axis=0)
        y = self.y_scaler.inverse(z).reshape(len(x), *self.shape)
        return monotone_steps(y)


def monotone_steps(y):
    """Each curve (last axis) non-increasing: its first value plus the running sum of its
    non-positive steps (what the ONNX graph computes)."""
    import numpy as np

    steps = np.minimum(np.diff(y, axis=-1), 0.0)
    return np.concatenate([y[..., :1], y[..., :1] + np.cumsum(steps, axis=-1)], axis=-1)


# --- evaluation -----------------------------------------------------------------------------


def evaluate(pred, data, index, formats=None) -> dict:
    """Per format and target: log-DSSIM MAE, quality MAE vs the exhaustive optimum, and the
    share within allowed_error after 0, 1 and 2 corrections, simulated on the labels' curves
    (log DSSIM linear between grid qualities, the labels as measured, not smoothed)."""
    import numpy as np

    from inference.autoquality import corrected_quality, predicted_quality

    grid = np.array(data["grid"], dtype=float)
    formats = formats or data["formats"]
    ints = np.arange(LOW, HIGH + 1)
    out: dict = {}
    for f, fmt in enumerate(data["formats"]):
        if fmt not in formats:
            continue
        truth_log = data["log_dssim"][index, f]
        p = pred[:, f]
        err = np.abs(p - truth_log)
        # The part of the curve autoquality uses: DSSIM within [0.003, 0.1].
        useful = (truth_log > math.log(0.003)) & (truth_log < math.log(0.1))
        entry = {
            "log_mae": float(err.mean()),
            "log_mae_useful": float(err[useful].mean()) if useful.any() else None,
            "samples": int(len(index)),
            "targets": {},
        }
        sizes = np.log(data["bytes"][index, f].astype(float))
        for target in TARGETS:
            q_err, within = [], [[], [], []]
            encodes, overhead, unreachable = [], [], 0
            for n in range(len(index)):
                curve = np.exp(np.interp(ints, grid, truth_log[n]))

                def measure(q, curve=curve):
                    return float(curve[int(q) - LOW])

                near = np.abs(curve - target) <= ALLOWED_ERROR
                meets = curve <= target
                if not near.any():
                    unreachable += 1
                    continue
                optimum = int(ints[np.argmax(meets)]) if meets.any() else HIGH
                q = predicted_quality(grid, p[n], target, LOW, HIGH)
                q_err.append(abs(q - optimum))
                tried = [(q, measure(q))]
                for _ in range(2):
                    if abs(tried[-1][1] - target) <= ALLOWED_ERROR:
                        break
                    q = corrected_quality(grid, p[n], target, tried[-1], LOW, HIGH)
                    if q in (t[0] for t in tried):
                        break
                    tried.append((q, measure(q)))
                for k in range(3):
                    within[k].append(
                        any(abs(d - target) <= ALLOWED_ERROR for _, d in tried[: k + 1])
                    )
                encodes.append(len(tried))
                # The DSSIM method's rule: the lowest tried quality that meets target +
                # allowed_error, else the highest tried; bytes against the exhaustive optimum
                # (the lowest integer quality whose DSSIM <= target: a pick up to
                # allowed_error over the target can be smaller).
                good = [t for t, d in tried if d <= target + ALLOWED_ERROR]
                final = min(good) if good else max(t for t, _ in tried)
                size = np.interp([final, optimum], grid, sizes[n])
                overhead.append(math.exp(size[0] - size[1]) - 1.0)
            entry["targets"][str(target)] = {
                "quality_mae": float(np.mean(q_err)) if q_err else None,
                "within_0": float(np.mean(within[0])) if q_err else None,
                "within_1": float(np.mean(within[1])) if q_err else None,
                "within_2": float(np.mean(within[2])) if q_err else None,
                "mean_encodes": float(np.mean(encodes)) if q_err else None,
                "bytes_vs_optimum": float(np.mean(overhead)) if q_err else None,
                "reachable": len(q_err),
                "unreachable": unreachable,
            }
        out[fmt] = entry
    return out


def summary_score(metrics: dict) -> float:
    """One number to compare models (higher is better): the share within allowed_error
    without correction and after one, averaged over both, the formats and the targets (the
    first sets the encodes per image, the second how often the ML method needs more)."""
    values = [
        (t["within_0"] + t["within_1"]) / 2.0
        for m in metrics.values()
        for t in m["targets"].values()
        if t["within_0"] is not None
    ]
    return float(sum(values) / len(values))


# --- commands -------------------------------------------------------------------------------


# name -> (estimator kind, options, input): "features" (inference.autoquality) or "pixels"
# (the sample squeezed to 32x32 RGB, an MLP on it: the first stand-in for a learned-from-pixels
# model; real CNNs on the pixels are compared by compare_cnn.py, which installs PyTorch).
CANDIDATES = {
    "ridge": ("ridge", {"alpha": 10.0}, "features"),
    "knn": ("knn", {"k": 7}, "features"),
    "trees": ("trees", {"trees": 200}, "features"),
    "mlp32-a1": ("mlp", {"hidden": (32, 32), "alpha": 1.0}, "features"),
    "mlp64-a0.3": ("mlp", {"hidden": (64, 64), "alpha": 0.3}, "features"),
    "mlp64-a1": ("mlp", {"hidden": (64, 64), "alpha": 1.0}, "features"),
    "mlp64-a3": ("mlp", {"hidden": (64, 64), "alpha": 3.0}, "features"),
    "pixels-mlp64-a3": ("mlp", {"hidden": (64, 64), "alpha": 3.0}, "pixels"),
    "pixels-mlp64-a30": ("mlp", {"hidden": (64, 64), "alpha": 30.0}, "pixels"),
}


def inputs(data: dict, kind: str):
    if kind == "features":
        return data["features"].astype("float64")
    return data["thumbnails"].reshape(len(data["thumbnails"]), -1).astype("float64") / 255.0


def _limit_threads() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # deterministic sums, and the other core is labelling's


def cmd_cv(args) -> dict:
    import numpy as np

    _limit_threads()
    data = load_labels()
    train = np.flatnonzero(data["split"] == "train")
    packages = sorted(set(data["packages"][train]))
    names = args.only or list(CANDIDATES)
    print(
        "leave-one-package-out over the training packages; per format: log-DSSIM MAE (DSSIM "
        f"0.003-0.1), then within allowed_error without:with one correction at {TARGETS}"
    )
    results = {}
    for name in names:
        kind, options, input_kind = CANDIDATES[name]
        x = inputs(data, input_kind)
        started = time.perf_counter()
        pred = np.zeros_like(data["log_dssim"][train])
        for package in packages:
            test = data["packages"][train] == package
            model = CurveModel(kind, **options).fit(
                x[train[~test]], data["log_dssim"][train[~test]]
            )
            pred[test] = model.predict(x[train[test]])
        metrics = evaluate(pred, data, train)
        results[name] = metrics
        line = ", ".join(
            f"{fmt} {m['log_mae_useful']:.3f} "
            + "/".join(
                f"{m['targets'][str(t)]['within_0']:.2f}:{m['targets'][str(t)]['within_1']:.2f}"
                for t in TARGETS
            )
            for fmt, m in metrics.items()
        )
        print(
            f"{name:17s} {summary_score(metrics):.3f}  {line}  "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return results


def cmd_fit(args) -> dict:
    import numpy as np

    _limit_threads()
    data = load_labels()
    train = np.flatnonzero(data["split"] == "train")
    held = np.flatnonzero(data["split"] == "held_out")
    started = time.perf_counter()
    model = CurveModel("mlp").fit(data["features"][train], data["log_dssim"][train])
    fit_s = time.perf_counter() - started
    report = {
        "model_version": MODEL_VERSION,
        "seed": SEED,
        "model": {"kind": "mlp", "members": MEMBERS, "hidden": list(HIDDEN), "alpha": ALPHA},
        "samples": {"train": int(len(train)), "held_out": int(len(held))},
        "held_out_packages": sorted(set(data["packages"][held])),
        "train_packages": sorted(set(data["packages"][train])),
        "fit_seconds": round(fit_s, 1),
        "train": evaluate(model.predict(data["features"][train]), data, train),
        "held_out": evaluate(model.predict(data["features"][held]), data, held),
        "log_dssim_error": lopo_log_errors(data, train),
    }
    onnx_path = export(model, data)
    report["onnx"] = {
        "path": str(onnx_path.relative_to(REPO_ROOT)),
        "bytes": onnx_path.stat().st_size,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }
    report["version"] = version_string(onnx_path)
    report["onnx"]["max_abs_diff_vs_sklearn"] = check_onnx(model, data, onnx_path)
    write_repository_files(data, report)
    REPORT.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    return report


# A normal error's deviation over its mean absolute value.
NORMAL_SIGMA_PER_MAE = math.sqrt(math.pi / 2)


def lopo_log_errors(data: dict, train) -> dict[str, float]:
    """The served ``log_dssim_error`` per format: the chosen model's leave-one-package-out
    log-DSSIM MAE over the training packages (DSSIM 0.003-0.1, as ``cv`` reports it), as a
    normal error's deviation. The held-out package plays no part."""
    import numpy as np

    packages = sorted(set(data["packages"][train]))
    pred = np.zeros_like(data["log_dssim"][train])
    for package in packages:
        test = data["packages"][train] == package
        model = CurveModel("mlp").fit(
            data["features"][train[~test]], data["log_dssim"][train[~test]]
        )
        pred[test] = model.predict(data["features"][train[test]])
    metrics = evaluate(pred, data, train)
    return {fmt: round(m["log_mae_useful"] * NORMAL_SIGMA_PER_MAE, 3) for fmt, m in metrics.items()}


def cmd_check(args) -> int:
    """Re-evaluate the committed ONNX on the labels: the figures must match report.json."""
    import numpy as np

    data = load_labels()
    committed = json.loads(REPORT.read_text())
    session = _session(MODEL_DIR / "1" / "model.onnx")
    bad = 0
    for split in ("train", "held_out"):
        index = np.flatnonzero(data["split"] == split)
        pred = session.run([OUTPUT_NAME], {INPUT_NAME: data["features"][index]})[0]
        metrics = evaluate(pred.astype(np.float64), data, index)
        for fmt, m in metrics.items():
            for target, t in m["targets"].items():
                old = committed[split][fmt]["targets"][target]
                for key in ("quality_mae", "within_0", "within_1"):
                    if old[key] is not None and abs(t[key] - old[key]) > 1e-6:
                        print(f"{split} {fmt} {target} {key}: {t[key]} != {old[key]}")
                        bad += 1
    print("check:", "the ONNX reproduces report.json" if not bad else f"{bad} differences")
    return 1 if bad else 0


def print_report(report: dict) -> None:
    """The figures as the README's markdown table."""
    print(
        f"model {report['version']}: {report['samples']['train']} training samples, "
        f"{report['samples']['held_out']} held out ({', '.join(report['held_out_packages'])}); "
        f"fit {report['fit_seconds']} s; ONNX {report['onnx']['bytes']} bytes\n"
    )
    print(
        "| split | format | target | log-DSSIM MAE | quality MAE | within, 0 / 1 / 2 "
        "corrections | encodes | bytes vs optimum | reachable / not |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ("train", "held_out"):
        for fmt, m in report[split].items():
            for target, t in m["targets"].items():
                within = " / ".join(f"{100 * t[f'within_{k}']:.1f} %" for k in range(3))
                print(
                    f"| {split.replace('_', '-')} | {fmt} | {target} | "
                    f"{m['log_mae_useful']:.3f} | {t['quality_mae']:.2f} | {within} | "
                    f"{t['mean_encodes']:.2f} | {100 * t['bytes_vs_optimum']:+.1f} % | "
                    f"{t['reachable']} / {t['unreachable']} |"
                )


# --- export ---------------------------------------------------------------------------------


def export(model: CurveModel, data: dict) -> Path:
    """The ensemble as one ONNX graph: features [N, F] -> log_dssim [N, formats, grid]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    formats, grid = len(data["formats"]), len(data["grid"])
    n_features = data["features"].shape[1]
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    x_mean = const("x_mean", model.x_scaler.mean)
    x_scale = const("x_scale", model.x_scaler.scale)
    nodes.append(helper.make_node("Sub", [INPUT_NAME, x_mean], ["x_centred"]))
    nodes.append(helper.make_node("Div", ["x_centred", x_scale], ["x"]))
    outputs = []
    for m, estimator in enumerate(model.estimators):
        h = "x"
        layers = len(estimator.coefs_)
        for layer, (w, b) in enumerate(zip(estimator.coefs_, estimator.intercepts_, strict=True)):
            name = f"m{m}_l{layer}"
            nodes.append(helper.make_node("MatMul", [h, const(f"{name}_w", w)], [f"{name}_mm"]))
            nodes.append(helper.make_node("Add", [f"{name}_mm", const(f"{name}_b", b)], [name]))
            h = name
            if layer < layers - 1:
                nodes.append(helper.make_node("Relu", [h], [f"{name}_relu"]))
                h = f"{name}_relu"
        outputs.append(h)
    nodes.append(helper.make_node("Sum", outputs, ["z_sum"]))
    # mean over members, then the targets' scale: y = z_sum * (scale / M) + mean
    y_scale = const("y_scale_over_members", model.y_scaler.scale / len(model.estimators))
    nodes.append(helper.make_node("Mul", ["z_sum", y_scale], ["y_scaled"]))
    nodes.append(helper.make_node("Add", ["y_scaled", const("y_mean", model.y_scaler.mean)], ["y"]))
    shape = numpy_helper.from_array(np.array([-1, formats, grid], dtype=np.int64), "curve_shape")
    inits.append(shape)
    nodes.append(helper.make_node("Reshape", ["y", "curve_shape"], ["raw"]))
    # Non-increasing along the grid: first + cumsum(min(diff, 0)).
    for name, values in (
        ("s0", [0]),
        ("s1", [1]),
        ("e1", [1]),
        ("end", [grid]),
        ("e_last", [grid - 1]),
        ("axis2", [2]),
    ):
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    nodes += [
        helper.make_node("Slice", ["raw", "s0", "e1", "axis2"], ["first"]),
        helper.make_node("Slice", ["raw", "s1", "end", "axis2"], ["upper"]),
        helper.make_node("Slice", ["raw", "s0", "e_last", "axis2"], ["lower"]),
        helper.make_node("Sub", ["upper", "lower"], ["steps"]),
        helper.make_node("Min", ["steps", const("zero", 0.0)], ["falls"]),
        helper.make_node("CumSum", ["falls", "axis_scalar"], ["drops"]),
        helper.make_node("Add", ["first", "drops"], ["rest"]),
        helper.make_node("Concat", ["first", "rest"], [OUTPUT_NAME], axis=2),
    ]
    inits.append(numpy_helper.from_array(np.array(2, dtype=np.int64), "axis_scalar"))
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", formats, grid])],
        initializer=sorted(inits, key=lambda t: t.name),
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=GENERATOR,
        ir_version=IR_VERSION,
    )
    onnx_model.doc_string = (
        "imagesvc autoquality: image features (inference.autoquality.FEATURE_NAMES) -> "
        "predicted log(DSSIM) per format at each grid quality (curve.json)."
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    path = MODEL_DIR / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(model: CurveModel, data: dict, path: Path) -> float:
    """The ONNX graph against the scikit-learn ensemble on every sample (float32 vs float64)."""
    import numpy as np

    session = _session(path)
    x = data["features"]
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    want = model.predict(x)
    diff = float(np.abs(got - want).max())
    if diff > 1e-3:
        raise RuntimeError(f"ONNX differs from the ensemble by {diff}")
    one = session.run([OUTPUT_NAME], {INPUT_NAME: x[:1]})[0]
    if not np.allclose(one[0], got[0], atol=1e-5):
        raise RuntimeError("a batch of one differs from the same row in a batch")
    return diff


def version_string(onnx_path: Path) -> str:
    return f"{MODEL_VERSION}-{hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:8]}"


def config_pbtxt(
    data: dict, version: str, device: str, log_errors: dict[str, float] | None = None
) -> str:
    formats = ",".join(data["formats"])
    grid = ",".join(str(q) for q in data["grid"])
    error_line = ""
    if log_errors:
        errors = ",".join(f"{log_errors[fmt]:g}" for fmt in data["formats"])
        error_line = f"""\
# The model's log(DSSIM) error on pictures it was not fitted on, per format: 1.25 x the
# leave-one-package-out MAE (a normal error's deviation); the service's first trial uses it.
parameters {{ key: "log_dssim_error" value: {{ string_value: "{errors}" }} }}
"""
    if device == "cpu":
        header = f"""\
# Generated by `{GENERATOR} fit`; provenance in ../PROVENANCE.md.
# Default config (CPU). Stock Triton serves it with its onnxruntime backend; the local CPU
# sidecar (inference/sidecar.py) derives a python-backend twin of it with the same contract.
# With --model-config-name=gpu, Triton loads configs/gpu.pbtxt instead: same model file, same
# contract (names, dtypes, dims, max_batch_size), on the GPU with dynamic batching.
name: "{MODEL_NAME}"
"""
        placement = """\
instance_group [ { kind: KIND_CPU count: 1 } ]
# No dynamic batching on CPU: a batch is one request's candidate formats, already together.
"""
    else:
        header = f"""\
# Generated by `{GENERATOR} fit`; provenance in ../../PROVENANCE.md.
# GPU config: Triton started with --model-config-name=gpu (k8s/overlays/prod) loads this
# instead of ../config.pbtxt. Same model file (../1/model.onnx), same contract (names, dtypes,
# dims, max_batch_size); only the placement and the batching differ.
name: "{MODEL_NAME}"
"""
        placement = """\
instance_group [ { kind: KIND_GPU count: 1 } ]
# Requests that queue while the GPU is busy run together as one batch (up to max_batch_size).
# No added wait: raise max_queue_delay_microseconds only after measuring (perf_analyzer).
dynamic_batching { max_queue_delay_microseconds: 0 }
"""
    n_features = data["features"].shape[1]
    return f"""{header}\
backend: "onnxruntime"
# dims exclude the batch dimension, which is dynamic in the ONNX graph. Input: the image's
# features (inference.autoquality.FEATURE_NAMES); output: predicted log(DSSIM) per format
# (parameter "formats") at each quality of "grid", non-increasing along the grid.
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ {n_features} ] }}
]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {len(data["formats"])}, {len(data["grid"])} ] }}
]
{placement}\
# One thread per inference: on a 2-core pod the sidecar must not starve libvips.
# The onnxruntime backend reads this key; the sidecar's python-backend runner honours it too.
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
# What the output means and which model this is (the service reports "version"); Triton's
# backends ignore these keys. The same values are in curve.json.
parameters {{ key: "version" value: {{ string_value: "{version}" }} }}
parameters {{ key: "formats" value: {{ string_value: "{formats}" }} }}
parameters {{ key: "grid" value: {{ string_value: "{grid}" }} }}
parameters {{ key: "features_version" value: {{ string_value: "{_features_version()}" }} }}
{error_line}"""


def _features_version() -> int:
    from inference.autoquality import FEATURES_VERSION

    return FEATURES_VERSION


def write_repository_files(data: dict, report: dict) -> None:
    version = report["version"]
    (MODEL_DIR / "configs").mkdir(parents=True, exist_ok=True)
    errors = report.get("log_dssim_error")
    (MODEL_DIR / "config.pbtxt").write_text(config_pbtxt(data, version, "cpu", errors))
    (MODEL_DIR / "configs" / "gpu.pbtxt").write_text(config_pbtxt(data, version, "gpu", errors))
    from inference.autoquality import FEATURE_NAMES

    curve = {
        "version": version,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "features_version": _features_version(),
        "features": list(FEATURE_NAMES),
        "formats": data["formats"],
        "grid": data["grid"],
        "meaning": "output[f][i] = predicted natural log of DSSIM (imagesvc.encoding.dssim) of "
        "format formats[f] at quality grid[i]; non-increasing in i",
        "encoders": json.loads(str(data["settings"])),
    }
    if errors:
        curve["log_dssim_error"] = errors
    (MODEL_DIR / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    write_provenance(report)


def write_provenance(report: dict) -> None:
    from inference.export_blazeface import write_section

    manifest = json.loads((HERE / "manifest.json").read_text())
    rows = []
    for package in manifest["packages"]:
        split = "held out" if package["key"] in manifest["held_out"] else "training"
        rows.append(
            f"| {package['name']} {package['version']} | {package['registry']} | "
            f"{len(package['members'])} | {split} | {package['licence']} |"
        )
    held = report["held_out"]
    figures = []
    for fmt, m in held.items():
        t = m["targets"]["0.02"]
        figures.append(
            f"| {fmt} | {m['log_mae_useful']:.3f} | {t['quality_mae']:.2f} | "
            f"{100 * t['within_0']:.1f} % | {100 * t['within_1']:.1f} % |"
        )
    body = f"""\
## Autoquality curve model (`autoquality`)

Generated by `{GENERATOR}`; do not edit by hand. Trained here, from scratch, by the
scripts in `inference/training/autoquality/` (README there: how to rerun, timings, figures).

| model | model.onnx sha256 | onnx bytes | version |
|---|---|---|---|
| `autoquality` | `{report["onnx"]["sha256"]}` | {report["onnx"]["bytes"]} | `{report["version"]}` |

Input `{INPUT_NAME}` FP32 [batch, {_features_count()}]: image statistics at output size
(`inference/autoquality.py`, `FEATURE_NAMES`). Output `{OUTPUT_NAME}` FP32 [batch, formats,
grid]: predicted natural log of the service's DSSIM per format and quality (`curve.json`).
An ensemble of {report["model"]["members"]} multilayer perceptrons ({"x".join(map(str, report["model"]["hidden"]))}, ReLU,
scikit-learn 1.9.1, L2 alpha {report["model"]["alpha"]}, seed {report["seed"]}), written as
plain ONNX ops (opset {OPSET}).

Training data: {report["samples"]["train"]} samples (crops and resizes, 160-1920 px) of
the pictures below, labelled with real libvips encodes (DSSIM at every grid quality). The
pictures are not redistributed: the model's weights are fitted on statistics of them.

| source | registry | pictures | split | licence (debian/copyright, scikit-image docs) |
|---|---|---|---|---|
{chr(10).join(rows)}

Held-out figures (package {", ".join(report["held_out_packages"])}, {report["samples"]["held_out"]}
samples, target DSSIM 0.02, allowed error 0.001; all targets in the README):

| format | log-DSSIM MAE | quality MAE (steps) | within, no correction | within, one correction |
|---|---|---|---|---|
{chr(10).join(figures)}
"""
    write_section(REPOSITORY / "PROVENANCE.md", GENERATOR, body)
    notice = """\
Autoquality curve model (autoquality)
Trained by imagesvc's own scripts (inference/training/autoquality/) on pictures from the
Debian packages gnome-backgrounds, mate-backgrounds, sway-backgrounds, lomiri-wallpapers
and desktop-base (GPL-2+, GPL-2, Expat, CC-BY-SA-3.0 and CC-BY-SA-4.0 pictures; see
PROVENANCE.md) and scikit-image's bundled photographs (public domain / CC0). No picture
is redistributed; the weights are statistics fitted on them."""
    write_section(REPOSITORY / "NOTICE", GENERATOR, notice)


def _features_count() -> int:
    from inference.autoquality import N_FEATURES

    return N_FEATURES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ensure_venv(argv)
    sys.path.insert(0, str(REPO_ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cv = sub.add_parser("cv", help="leave-one-package-out comparison of model families")
    cv.add_argument("--only", nargs="*", choices=list(CANDIDATES))
    sub.add_parser("fit", help="train on the training split, report, export the ONNX")
    sub.add_parser("check", help="re-evaluate the committed ONNX against report.json")
    args = parser.parse_args(argv)
    if args.command == "cv":
        cmd_cv(args)
        return 0
    if args.command == "fit":
        cmd_fit(args)
        return 0
    return cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
