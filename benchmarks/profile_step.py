"""Where a training step spends its time, part by part: the apps' defaults against the path every run took before
mixed precision, channels-last and the feature cache (fp32, contiguous, no cache; benchmarks/speed.py's BEFORE).

    .venv/bin/python benchmarks/profile_step.py [--app almrr|vmpfd] [--preset cpu] [--steps 3] [--threads N]

One step of the preset's model (random weights, random images at the preset's image size and batch size) is cut
into parts. ALMRR: the synthesis of the batch (textures bundled with scikit-image), the frozen backbone
(``train_features``: on what has to be computed; the feature cache holds what a training's second and later epochs
find there), the reconstructor, the refiner (its inputs included), the losses, backward and the optimizer (fused
where the device has it). VMPFD-AD: the autoencoder, the local branch (the descriptor's features, the adapter and
the mixture density head; the descriptor's features of the training images are computed once first, as a training
does), the losses, backward and the optimizer. Printed as a Markdown table of seconds per step, the mean of
``--steps`` steps after one warm-up, the two paths alternating twice. ``--preset none``: the paper configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))   # speed.py beside it, however this file is loaded
from speed import BEFORE, training_samples  # noqa: E402

PARTS = {"almrr": ("synthesis", "backbone", "reconstructor", "refiner", "losses", "backward", "optimizer"),
         "vmpfd": ("autoencoder", "local branch", "losses", "backward", "optimizer")}


def _almrr_step(method, samples, rng, marks: list[float]) -> torch.Tensor:
    from ssmad.heads.losses import dice_loss, focal_loss

    batch = default_collate([method.train_item(s, rng) for s in samples])
    marks.append(time.perf_counter())
    target, feats = method.train_features(batch)
    marks.append(time.perf_counter())
    recon = method.model.reconstruct(feats)
    marks.append(time.perf_counter())
    logits = F.interpolate(method.model.refine(recon, feats), size=batch["mask"].shape[-2:], mode="bilinear",
                           align_corners=False)
    marks.append(time.perf_counter())
    loss = (F.mse_loss(recon, target) + focal_loss(logits, batch["mask"], gamma=method.gamma)
            + dice_loss(torch.softmax(logits, 1)[:, 1:], batch["mask"]))
    marks.append(time.perf_counter())
    return loss


def _vmpfd_step(method, samples, rng, marks: list[float]) -> torch.Tensor:
    from ssmad.heads.losses import ssim

    batch = default_collate([method.train_item(s, rng) for s in samples])
    images = batch["image"]
    recon, latent = method.model.run("autoencoder", images)
    marks.append(time.perf_counter())
    t, log_volume = method.model.local_input(images, latent, batch.get("pdn"))
    nll = method.model["density"].nll(t)
    marks.append(time.perf_counter())
    target = images * 2 - 1
    loss = (nll.mean() + method.lambda_mse * F.mse_loss(recon, target)
            + method.lambda_ssim * (1 - ssim(recon, target, data_range=2.0)))
    if method.lambda_volume:
        loss = loss - method.lambda_volume * log_volume / t.shape[1]
    marks.append(time.perf_counter())
    return loss


def profile(app: str, method, config, steps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    samples = training_samples(method, config)
    optimizer = method.make_optimizer()
    method.train(True)
    parts = PARTS[app]
    total = dict.fromkeys(parts, 0.0)

    def step(t: dict[str, float]) -> None:
        marks = [time.perf_counter()]
        loss = (_almrr_step if app == "almrr" else _vmpfd_step)(method, samples, rng, marks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        for part, a, b in zip(parts, marks[:-1], marks[1:], strict=True):
            t[part] += b - a

    step(dict.fromkeys(parts, 0.0))
    for _ in range(steps):
        step(total)
    return {k: v / steps for k, v in total.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", choices=sorted(PARTS), default="almrr")
    ap.add_argument("--preset", default="cpu", help="the app's preset (default cpu; none: the paper configuration)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measure (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.threads < 0:
        ap.error("--steps must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from apps.almrr import APP as ALMRR
    from apps.common.config import load_config
    from apps.common.method import UnfittedWarning
    from apps.vmpfd import APP as VMPFD

    app = ALMRR if args.app == "almrr" else VMPFD
    preset = None if args.preset == "none" else args.preset
    methods = {}
    for name, sets in (("before", BEFORE[args.app]), ("defaults", [])):
        config = load_config(app.app_dir, preset, None, sets)
        # the paper's VMPFD-AD distils its PDN first; its speed does not depend on the weights
        config["pipeline"] = [dict(e, weights="none") if e.get("role") == "pdn" and preset is None else e
                              for e in config["pipeline"]]
        methods[name] = app.method_cls(config, torch.device("cpu"), for_training=False), config
    parts = PARTS[args.app]
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in methods}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnfittedWarning)
        for _ in range(2):
            for name, (method, config) in methods.items():
                rows[name].append(profile(args.app, method, config, args.steps))
    mean = {p: {k: sum(r[k] for r in runs) / len(runs) for k in parts} for p, runs in rows.items()}
    config = methods["defaults"][1]
    print(f"{args.app} preset {args.preset}, batch {config['train']['batch_size']} at {config['data']['image_size']} "
          f"px, torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per step; before: "
          f"{' '.join(BEFORE[args.app])}")
    print("| part | before | defaults | before / defaults |\n|---|---:|---:|---:|")
    for k in (*parts, "total"):
        a = sum(mean["before"].values()) if k == "total" else mean["before"][k]
        b = sum(mean["defaults"].values()) if k == "total" else mean["defaults"][k]
        print(f"| {k} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
