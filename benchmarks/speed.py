"""Training steps and inference per image of both apps' ``cpu`` presets at their defaults against the path every
run took before mixed precision, channels-last and the feature cache (fp32, contiguous, no cache), interleaved in
one run so that the machine's noise falls on both alike.

    make bench-speed                        # or: .venv/bin/python benchmarks/speed.py [--steps 6] [--threads N]

The models are the presets' own, with random weights (speed does not depend on them) and random images at the
preset's image size; ALMRR's synthetic anomalies use the textures bundled with scikit-image. Each measure is the
median of ``--rounds`` alternating rounds of ``--steps`` steps (after one warm-up step each). What is timed:
a training step is the method's ``train_item`` for each image of a batch, ``train_step``, backward and the
optimizer; inference is ``predict`` on one batch of ``train.eval_batch_size`` images (ALMRR's distance unfitted: the
mean squared distance instead of its per-position Mahalanobis, a small share of the time; VMPFD-AD its two raw
maps, before the normalisations fitted after training). The same images train every step, so ALMRR's feature cache
holds what a training's second and later epochs find there (the clean images a draw leaves unrotated); VMPFD-AD's
descriptor features are computed once first, as a training does. The last
line is ``speedup: almrr train N.N, vmpfd train N.N, almrr infer N.N, vmpfd infer N.N``, the ratio of the old
path's time to the defaults'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch.utils.data import default_collate

#: the settings of the path every run took before (the defaults have none of these)
BEFORE = {"almrr": ['train.precision="fp32"', 'train.memory_format="contiguous"', "method.feature_cache_mb=0"],
          "vmpfd": ['train.precision="fp32"', 'train.memory_format="contiguous"']}


def build(app, overrides: list[str], preset: str = "cpu"):
    from apps.common.config import load_config

    config = load_config(app.app_dir, preset, None, overrides)
    return app.method_cls(config, torch.device("cpu"), for_training=False), config


def training_samples(method, config) -> list:
    """One batch of random training samples at the preset's size, and what a training computes once before its
    first step (:meth:`Method.prepare`): VMPFD-AD's pooled features of a frozen descriptor (``pdn_cache``)."""
    from ssmad.core import Sample

    size = int(config["data"]["image_size"])
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(image=torch.rand(3, size, size, generator=gen), mask=None, label=0, path=f"{i}.png",
                      original_size=(size, size)) for i in range(int(config["train"]["batch_size"]))]
    if hasattr(method, "pdn_cache"):
        with torch.no_grad():
            feats = method.model.pdn_features(torch.stack([s.image for s in samples]))
        method.pdn_cache = {s.path: f for s, f in zip(samples, feats)}
    return samples


def train_seconds(method, config, steps: int) -> float:
    rng = np.random.default_rng(0)
    samples = training_samples(method, config)
    optimizer = method.make_optimizer()
    method.train(True)

    def step() -> None:
        items = [method.train_item(s, rng) for s in samples]
        batch = default_collate(items)
        loss = method.train_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def infer_seconds(method, config, steps: int) -> float:
    size = int(config["data"]["image_size"])
    images = torch.rand(int(config["train"]["eval_batch_size"]), 3, size, size,
                        generator=torch.Generator().manual_seed(1))
    method.train(False)
    run = method.raw_maps if hasattr(method, "raw_maps") else method.predict
    run(images)
    start = time.perf_counter()
    for _ in range(steps):
        run(images)
    return (time.perf_counter() - start) / steps / len(images)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per measure (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--preset", default="cpu", help="the apps' preset to time (default cpu)")
    args = ap.parse_args(argv)
    if min(args.steps, args.rounds) < 1 or args.threads < 0:
        ap.error("--steps and --rounds must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from apps.almrr import APP as ALMRR
    from apps.common.method import UnfittedWarning
    from apps.vmpfd import APP as VMPFD
    from ssmad.core.device import resolve_precision

    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; train.precision = auto is {auto} here; "
          "before: " + "; ".join(f"{k} {' '.join(v)}" for k, v in BEFORE.items()))
    speedups: dict[str, float] = {}
    for name, app in (("almrr", ALMRR), ("vmpfd", VMPFD)):
        models = {"before": build(app, BEFORE[name], args.preset), "defaults": build(app, [], args.preset)}
        for what, measure in (("train", train_seconds), ("infer", infer_seconds)):
            times: dict[str, list[float]] = {k: [] for k in models}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnfittedWarning)
                for _ in range(args.rounds):
                    for p, (method, config) in models.items():
                        times[p].append(measure(method, config, args.steps))
            old, new = statistics.median(times["before"]), statistics.median(times["defaults"])
            unit = "s per step" if what == "train" else "s per image"
            print(f"{name} {what}: before {old:.3f} {unit}, defaults {new:.3f}: {old / new:.2f}x", flush=True)
            speedups[f"{name} {what}"] = old / new
    order = ("almrr train", "vmpfd train", "almrr infer", "vmpfd infer")
    print("speedup: " + ", ".join(f"{k} {speedups[k]:.1f}" for k in order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
