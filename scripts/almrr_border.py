"""Where an ALMRR model's feature-distance maxima lie, and what ignoring the border or normalising per position does.

    .venv/bin/python scripts/almrr_border.py RUN_DIR [--band-px 16] [--device cpu]

For every test image of the run's dataset: the raw distance map ‖F̂ − F‖² (feature grid), whether its maximum lies
within ``--band-px`` input pixels of the image border, and the image AUROC of three scores: the raw map's maximum,
its maximum with that border band left out, and the maximum after the run's fitted ``distance_norm``
(docs/history/results-mt.md reports these for the Magnetic-tile-defect runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser

    args = run_parser(__doc__, "ALMRR").parse_args(argv)

    from apps.almrr import APP
    from apps.common import image_batches

    if (opened := open_run(APP, args, "ALMRR")) is None:
        return 2
    run, method = opened
    model = Path(args.run) / "model.pt"
    norm = method.distance.norm
    if norm is None or not norm.fitted:
        print(f"error: {model} has no fitted distance_norm (apps 0.2 or later, a finished training)", file=sys.stderr)
        return 2
    test = run.data().dataset.test
    image_size = int(run.config["data"]["image_size"])
    labels, near, raw, inner, normed = [], [], [], [], []
    band = 1
    with torch.no_grad():
        for samples, images in image_batches(test, 8, method.device):
            dist = method.raw_distance(images)
            dist_n = norm(dist)
            grid = dist.shape[-1]
            band = max(1, round(args.band_px * grid / image_size))
            for k, sample in enumerate(samples):
                m = dist[k, 0]
                r, c = divmod(int(m.argmax()), grid)
                near.append(min(r, c, grid - 1 - r, grid - 1 - c) < band)
                raw.append(float(m.max()))
                inner.append(float(m[band:-band, band:-band].max()))
                normed.append(float(dist_n[k, 0].max()))
                labels.append(int(sample.label))
    print(f"{args.run}: {len(labels)} test images, feature grid {grid}, border band {band} cells "
          f"(= {args.band_px} px of {image_size})")
    print(f"raw distance maximum within the border band: {100 * np.mean(near):.1f}% of the images")
    for name, scores in (("raw maximum", raw), ("raw maximum, border band left out", inner),
                         ("maximum after distance_norm", normed)):
        auroc = roc_auc_score(labels, scores) if len(set(labels)) == 2 else float("nan")
        print(f"image AUROC, {name}: {100 * auroc:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
