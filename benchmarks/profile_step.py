"""Where an ALMRR training step spends its time, part by part, in fp32 and in bf16 autocast.

    .venv/bin/python benchmarks/profile_step.py [--preset cpu] [--steps 3] [--threads N]

One step of the preset's model (random weights, random images at the preset's image size and batch size,
synthetic anomalies from the textures bundled with scikit-image) is cut into: the synthesis of the batch, the
frozen backbone on the clean and the anomalous images, the reconstructor, the refiner (its inputs included), the
losses, backward and the optimizer (the app's own, fused where the device has it). Printed as a Markdown table of
seconds per step, the mean of ``--steps`` steps after one warm-up, fp32 and bf16 alternating twice.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

PARTS = ("synthesis", "backbone", "reconstructor", "refiner", "losses", "backward", "optimizer")


def profile(method, config, steps: int) -> dict[str, float]:
    from ssmad.heads.losses import dice_loss, focal_loss

    size, batch_size = int(config["data"]["image_size"]), int(config["train"]["batch_size"])
    rng = np.random.default_rng(0)
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    optimizer = method.make_optimizer()
    method.train(True)
    total = dict.fromkeys(PARTS, 0.0)

    def step(t: dict[str, float]) -> None:
        marks = [time.perf_counter()]
        items = [method.train_item(_Sample(im), rng) for im in images]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        marks.append(time.perf_counter())
        both = method.model.features(torch.cat([batch["clean"], batch["anomalous"]]))
        target, feats = both[:batch_size], both[batch_size:]
        marks.append(time.perf_counter())
        recon = method.run_module("reconstructor", feats)
        marks.append(time.perf_counter())
        logits = F.interpolate(method.model.refine(recon, feats), size=batch["mask"].shape[-2:], mode="bilinear",
                               align_corners=False)
        marks.append(time.perf_counter())
        loss = (F.mse_loss(recon, target) + focal_loss(logits, batch["mask"], gamma=method.gamma)
                + dice_loss(torch.softmax(logits, 1)[:, 1:], batch["mask"]))
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        for part, a, b in zip(PARTS, marks[:-1], marks[1:], strict=True):
            t[part] += b - a

    step(dict.fromkeys(PARTS, 0.0))
    for _ in range(steps):
        step(total)
    return {k: v / steps for k, v in total.items()}


class _Sample:
    def __init__(self, image: torch.Tensor) -> None:
        self.image, self.mask, self.label, self.path = image, None, 0, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", help="ALMRR preset (default cpu; none: the paper configuration)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measure (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.threads < 0:
        ap.error("--steps must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from apps.almrr import APP
    from apps.common.config import load_config
    from apps.common.method import UnfittedWarning

    preset = None if args.preset == "none" else args.preset
    config = load_config(APP.app_dir, preset, None, [])
    method = APP.method_cls(config, torch.device("cpu"), for_training=False)
    rows: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnfittedWarning)
        for _ in range(2):
            for precision in rows:
                method.precision = precision
                rows[precision].append(profile(method, config, args.steps))
    mean = {p: {k: sum(r[k] for r in runs) / len(runs) for k in PARTS} for p, runs in rows.items()}
    print(f"ALMRR preset {args.preset}, batch {config['train']['batch_size']} at {config['data']['image_size']} px, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per step")
    print("| part | fp32 | bf16 | fp32 / bf16 |\n|---|---:|---:|---:|")
    for k in (*PARTS, "total"):
        a = sum(mean["fp32"].values()) if k == "total" else mean["fp32"][k]
        b = sum(mean["bf16"].values()) if k == "total" else mean["bf16"][k]
        print(f"| {k} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
