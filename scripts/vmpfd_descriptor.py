"""Which local descriptor for VMPFD-AD: each candidate's features, scored on held-out normal images and synthetic
anomalies of them — never the test split.

    .venv/bin/python scripts/vmpfd_descriptor.py --data mtd:ROOT \\
        --descriptor pdn_small:128:PDN_FILE --descriptor efficientnet_lite0:256:stage5,stage6 [--seed 0]

A descriptor is ``NAME:INPUT_SIZE:WEIGHTS_FILE`` for a PDN (``pdn_small``, ``pdn_medium``; the file a distillation
wrote) or ``NAME:INPUT_SIZE:LAYER,LAYER`` for a frozen ImageNet backbone; its stages are average-pooled to the
``--grid`` (VMPFD-AD's 8×8) as the method pools them. The images are those a VMPFD-AD run with this ``--seed`` and
``train.val_fraction`` trains on and holds out. What is measured is the descriptor, not a trained model: one
Gaussian per grid position (``position_mahalanobis``, as PaDiM) fitted on the training images' features — the best
a density that knows the position can do with them — scores the held-out normal images and one synthetic anomaly
of each (the Perlin-mask synthesiser, scikit-image textures by default: no texture a distillation might have seen).
Prints image AUROC (map maximum) and pixel AUROC per descriptor, and the seconds its features take per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_descriptor(spec: str):
    """(module, input size) of ``NAME:SIZE:FILE`` (PDN) or ``NAME:SIZE:LAYERS`` (backbone)."""
    from ssmad.core import ConfigError, build

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise ConfigError(f"--descriptor {spec!r}: expected NAME:INPUT_SIZE:FILE or NAME:INPUT_SIZE:LAYERS")
    name, size, rest = parts[0], int(parts[1]), parts[2]
    if name.startswith("pdn_"):
        return build("backbone", name, weights=rest).eval(), size
    return build("backbone", name, layers=rest.split(","), weights="imagenet").eval(), size


@torch.no_grad()
def pooled(module, size: int, images: torch.Tensor, grid: int, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(torch.cat([F.adaptive_avg_pool2d(s, grid) for s in module(x)], 1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    from _common import with_synthetic_anomalies

    from apps.common import split_validation
    from apps.vmpfd import APP
    from ssmad.core import SsmadError, build
    from ssmad.scoring import evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="KIND:PATH of the training data (its train split is used)")
    ap.add_argument("--category")
    ap.add_argument("--descriptor", action="append", required=True, help="NAME:SIZE:FILE or NAME:SIZE:LAYERS")
    ap.add_argument("--seed", type=int, default=0, help="the run's train.seed (default 0)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--texture-dir", default=None, help="textures of the synthetic anomalies (default: skimage)")
    args = ap.parse_args(argv)
    try:
        from ssmad.datasets import open_dataset

        params = {"image_size": args.image_size, **({"category": args.category} if args.category else {})}
        data = open_dataset(args.data, **params)
        val_fraction = float(APP.config()["train"]["val_fraction"])
        train_idx, val_idx = split_validation(data.train, val_fraction, args.seed)
        held = [data.train[i].image for i in val_idx]
        test, labels, pixel = with_synthetic_anomalies(held, args.seed, args.texture_dir)
        train = torch.stack([data.train[i].image for i in train_idx])
        print(f"{args.data}: {len(train_idx)} training images, {len(held)} held out + {len(held)} synthetic "
              f"anomalies of them (seed {args.seed})")
        print("| descriptor | channels | image AUROC | pixel AUROC | pixel AP | features s/image |")
        print("|---|---:|---:|---:|---:|---:|")
        for spec in args.descriptor:
            module, size = build_descriptor(spec)
            t0 = time.perf_counter()
            f_train = pooled(module, size, train, args.grid)
            per_image = (time.perf_counter() - t0) / len(train)
            gauss = build("distance", "position_mahalanobis", channels=0)
            gauss.fit([f_train[i:i + 64] for i in range(0, len(f_train), 64)])
            maps = gauss(pooled(module, size, test, args.grid))
            maps = F.interpolate(maps, size=test.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()
            m = evaluate(labels, maps.reshape(len(maps), -1).max(1), pixel, maps)
            print(f"| {spec} | {f_train.shape[1]} | {100 * m['image_auroc']:.1f} | {100 * m['pixel_auroc']:.1f} | "
                  f"{100 * m['pixel_ap']:.1f} | {per_image:.3f} |", flush=True)
    except SsmadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
