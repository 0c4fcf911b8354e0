"""Learned-from-pixels models against the features: which input is more accurate for its cost.

    python3 inference/training/autoquality/compare_cnn.py                  # all models, seed 1
    python3 inference/training/autoquality/compare_cnn.py --models tiles+features --seeds 1 2 3

The model's input could be the image itself, read by a small convolutional net (imgproxy
Pro's nets read the image downscaled to 256-416 px), or the features that
`inference.autoquality` computes. This script trains both kinds the same way (PyTorch, AdamW,
one-cycle schedule, the same 36 -> 64 -> 64 -> 54 head predicting the standardised log-DSSIM
curves of all three formats) and scores them as ``train.py cv`` does: leave-one-package-out
over the training packages (the criterion), then fitted on the whole training split and
evaluated on the held-out package. Models:

- ``features``: the 36 features alone (the head is the whole net): the like-for-like reference;
- ``tiles``: a CNN on 16 tiles of 64x64 px at output resolution (the pixels the encoder sees,
  where the features read them), their embeddings' mean and spread over the tiles, plus the
  size inputs (log pixels, log short side, grey);
- ``downscaled``: the same CNN on the whole sample squeezed to 128x128 px, plus the size inputs;
- ``tiles+features``: the tiles' embedding beside the 36 features.

Training draws 8 of 36 tiles (a 6x6 grid) per sample and step and mirrors them at random;
evaluation reads the 4x4 grid the service would send. Run ``gather.py`` and ``label.py``
first. Needs PyTorch on the CPU: the script creates its own venv, ``.venv-cnn`` beside it, from
``requirements-cnn.txt`` (pinned, ``--no-deps``; ``torch==2.13.0`` resolves to the CPU build
where one is on the machine's pip find-links, as on these machines, else to PyPI's CUDA
build, several GB) and re-runs itself there. ``train.py``, ``make run`` and ``make test``
never install it; the served model does not depend on it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[2])]

import train  # noqa: E402  (beside this file; the repository root for inference.autoquality)

VENV = HERE / ".venv-cnn"
REQUIREMENTS = HERE / "requirements-cnn.txt"
INPUTS = train.DATA / "cnn_inputs.npz"
TILE = 64
SERVED_GRID = 4  # 16 tiles at evaluation: what a request would send
TRAINING_GRID = 6  # 36 tiles to draw from in training
TILES_PER_STEP = 8
DOWNSCALED = 128
BATCH = 32
MODELS = ("features", "tiles", "downscaled", "tiles+features")
SIZE_INPUTS = 3  # log_pixels, log_min_side, grey: the first three features


# --- inputs ---------------------------------------------------------------------------------


def tile_grid(pixels, n: int):
    """n x n tiles of TILE px on a regular grid (8-px aligned, overlapping where the image is
    small); an image under TILE px on a side is mirrored out to TILE first."""
    import numpy as np

    h, w = pixels.shape[:2]
    if h < TILE or w < TILE:
        pad = ((0, max(0, TILE - h)), (0, max(0, TILE - w)), (0, 0))
        pixels = np.pad(pixels, pad, mode="reflect")
        h, w = pixels.shape[:2]
    ys = np.linspace(0, h - TILE, n).astype(int) // 8 * 8
    xs = np.linspace(0, w - TILE, n).astype(int) // 8 * 8
    return np.stack([pixels[y : y + TILE, x : x + TILE] for y in ys for x in xs])


def build_inputs(data: dict) -> dict:
    """The pixels each model reads, for every labelled sample (cached beside the labels)."""
    import numpy as np
    from PIL import Image

    if INPUTS.is_file():
        cached = dict(np.load(INPUTS))
        if list(cached["ids"]) == list(data["ids"]):
            return cached
    served, training, downscaled = [], [], []
    for sample_id in data["ids"]:
        with Image.open(train.DATA / "samples" / f"{sample_id}.png") as image:
            rgb = image.convert("RGB")  # grey samples as three equal bands
            pixels = np.asarray(rgb)
            small = np.asarray(rgb.resize((DOWNSCALED, DOWNSCALED), Image.Resampling.LANCZOS))
        served.append(tile_grid(pixels, SERVED_GRID))
        training.append(tile_grid(pixels, TRAINING_GRID))
        downscaled.append(small[None])
    out = {
        "ids": data["ids"],
        "served": np.stack(served),
        "training": np.stack(training),
        "downscaled": np.stack(downscaled),
    }
    np.savez(INPUTS, **out)
    return out


# --- models ---------------------------------------------------------------------------------


def make_net(model: str, n_features: int, width: int):
    import torch
    from torch import nn

    class CurveNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.reads_pixels = model != "features"
            self.feature_count = n_features if model in ("features", "tiles+features") else 0
            self.feature_count = self.feature_count or SIZE_INPUTS
            embedding = 0
            if self.reads_pixels:
                # 64 -> 32 -> 16 -> 8 px; ~2.6 M multiply-adds a 64 px tile.
                self.cnn = nn.Sequential(
                    nn.Conv2d(3, width // 2, 4, 2, 1),
                    nn.ReLU(),
                    nn.Conv2d(width // 2, width, 3, 2, 1),
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, 2, 1),
                    nn.ReLU(),
                )
                embedding = 2 * width
            self.head = nn.Sequential(
                nn.Linear(embedding + self.feature_count, 64),
                nn.ReLU(),
                nn.Linear(64, 64),
                nn.ReLU(),
                nn.Linear(64, 54),
            )

        def forward(self, pixels, features):
            parts = []
            if self.reads_pixels:
                b, k = pixels.shape[:2]
                z = self.cnn(pixels.reshape(b * k, *pixels.shape[2:])).mean(dim=(2, 3))
                z = z.reshape(b, k, -1)
                spread = z.std(1) if k > 1 else torch.zeros_like(z[:, 0])
                parts += [z.mean(1), spread]
            parts.append(features[:, : self.feature_count])
            return self.head(torch.cat(parts, 1))

    return CurveNet()


def as_tensor(pixels):
    """uint8 (B, K, H, W, 3) -> float (B, K, 3, H, W) in [-0.5, 0.5]."""
    import torch

    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).float().div_(255.0).sub_(0.5)


class Trained:
    """One fitted net with its scalers; ``predict`` gives monotone log-DSSIM curves."""

    def __init__(self, model, data, pixels, args, seed):
        import numpy as np
        import torch

        self.model, self.data, self.pixels, self.args, self.seed = model, data, pixels, args, seed
        x = data["features"].astype(np.float32)
        y = data["log_dssim"].reshape(len(x), -1).astype(np.float32)
        self.x, self.y = x, y
        self.torch, self.np = torch, np

    def _pixels(self, index, rng=None):
        np = self.np
        if self.model == "features":
            return None
        if self.model == "downscaled":
            chosen = self.pixels["downscaled"][index]
        elif rng is None:
            chosen = self.pixels["served"][index]
        else:
            pick = np.stack(
                [rng.choice(TRAINING_GRID**2, TILES_PER_STEP, replace=False) for _ in index]
            )
            chosen = self.pixels["training"][index[:, None], pick]
        out = as_tensor(chosen)
        if rng is not None and rng.random() < 0.5:
            out = out.flip(-1)
        return out

    def fit(self, index):
        torch, np = self.torch, self.np
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.x_mean, self.x_scale = self.x[index].mean(0), self.x[index].std(0) + 1e-6
        self.y_mean, self.y_scale = self.y[index].mean(0), self.y[index].std(0) + 1e-6
        features = torch.from_numpy((self.x - self.x_mean) / self.x_scale)
        targets = torch.from_numpy((self.y - self.y_mean) / self.y_scale)
        self.features = features
        self.net = make_net(self.model, self.x.shape[1], self.args.width)
        optimiser = torch.optim.AdamW(
            self.net.parameters(), lr=self.args.lr, weight_decay=self.args.weight_decay
        )
        steps = self.args.epochs * math.ceil(len(index) / BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=self.args.lr, total_steps=steps
        )
        self.net.train()
        for _ in range(self.args.epochs):
            order = rng.permutation(index)
            for start in range(0, len(order), BATCH):
                batch = order[start : start + BATCH]
                out = self.net(self._pixels(batch, rng), features[batch])
                loss = ((out - targets[batch]) ** 2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
        self.net.eval()
        return self

    def predict(self, index):
        torch = self.torch
        with torch.no_grad():
            out = self.net(self._pixels(index), self.features[index]).numpy()
        curves = (out * self.y_scale + self.y_mean).reshape(len(index), 3, -1)
        return train.monotone_steps(curves)

    def milliseconds_per_image(self, index, repeats: int = 30) -> float:
        """The net's forward pass for one image (batch 1, one thread), median."""
        torch, np = self.torch, self.np
        times = []
        with torch.no_grad(), _one_thread(torch):
            for n in range(repeats):
                one = index[n % len(index) : n % len(index) + 1]
                pixels, features = self._pixels(one), self.features[one]
                started = time.perf_counter()
                self.net(pixels, features)
                times.append((time.perf_counter() - started) * 1000.0)
        return float(np.median(times))


class _one_thread:
    def __init__(self, torch):
        self.torch = torch

    def __enter__(self):
        self.threads = self.torch.get_num_threads()
        self.torch.set_num_threads(1)

    def __exit__(self, *exc):
        self.torch.set_num_threads(self.threads)


# --- evaluation -----------------------------------------------------------------------------


def line(name: str, metrics: dict) -> str:
    """log-DSSIM MAE (DSSIM 0.003-0.1) and simulated encodes at 0.01/0.02/0.03, per format."""
    parts = [
        f"{fmt} {m['log_mae_useful']:.3f} "
        + "/".join(f"{m['targets'][str(t)]['mean_encodes']:.2f}" for t in train.TARGETS)
        for fmt, m in metrics.items()
    ]
    return f"  {name:9s} score {train.summary_score(metrics):.3f}  " + ", ".join(parts)


def compare(model: str, seed: int, data, pixels, args) -> None:
    import numpy as np

    training = np.flatnonzero(data["split"] == "train")
    held_out = np.flatnonzero(data["split"] != "train")
    packages = data["packages"][training]
    started = time.perf_counter()
    predicted = np.zeros_like(data["log_dssim"][training])
    for package in sorted(set(packages)):
        test = packages == package
        fitted = Trained(model, data, pixels, args, seed).fit(training[~test])
        predicted[test] = fitted.predict(training[test])
    lopo = train.evaluate(predicted, data, training)
    fitted = Trained(model, data, pixels, args, seed).fit(training)
    held = train.evaluate(fitted.predict(held_out), data, held_out)
    seconds = (time.perf_counter() - started) / (len(set(packages)) + 1)
    ms = fitted.milliseconds_per_image(held_out)
    print(
        f"{model} (seed {seed}): {seconds:.0f} s a fit, forward {ms:.2f} ms an image "
        "(one thread); per format log MAE, encodes at 0.01/0.02/0.03",
        flush=True,
    )
    print(line("LOPO", lopo), flush=True)
    print(line("held-out", held), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train.ensure_venv(argv, VENV, REQUIREMENTS, Path(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[1])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--width", type=int, default=32, help="the CNN's channels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    data = train.load_labels()
    pixels = build_inputs(data)
    for model in args.models:
        for seed in args.seeds:
            compare(model, seed, data, pixels, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
