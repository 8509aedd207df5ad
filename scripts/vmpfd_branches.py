"""Each VMPFD-AD map of a run alone, raw and normalised per position, and where its maxima lie.

    .venv/bin/python scripts/vmpfd_branches.py RUN_DIR [--band-px 16] [--device cpu]

Recomputes the local (LAM) and global (GAM) maps of the run's held-out normal validation images and of its test
images, and prints for each map image AUROC, pixel AUROC, pixel AP and AUPRO: as the run uses it (its quantile
normalisation is monotone, so the figures are those of the raw map), and after a per-position normalisation
fitted on the validation maps (``position_norm``: the mean subtracted, or a z-score) — the correction that ALMRR's
distance map needs — plus the share of test images whose maximum lies within ``--band-px`` of the image border.
docs/results-mt.md reports these for the Magnetic-tile-defect run.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

METRICS = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro"]


def main(argv: list[str] | None = None) -> int:
    from apps.common.diagnostics import open_finished_run, run_parser

    args = run_parser(__doc__, "VMPFD-AD").parse_args(argv)

    from apps.common.data import open_data, split_validation
    from apps.vmpfd.__main__ import APP
    from ssmad.core import SsmadError, build
    from ssmad.scoring import evaluate

    try:
        method, ckpt = open_finished_run(APP, args.run, args.device, "VMPFD-AD")
        config = ckpt["config"]
        data = open_data(config)
        _, val_idx = split_validation(data.train, float(config["train"]["val_fraction"]), int(config["train"]["seed"]))
    except SsmadError as exc:  # no model.pt, a checkpoint of another app, a bad --device, a dataset that moved
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not val_idx or len(data.test) == 0:
        print(f"error: {args.run}: needs held-out normal images and a test split", file=sys.stderr)
        return 2

    def maps(samples) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {"local": [], "global": []}
        with torch.no_grad():
            for i in range(0, len(samples), 16):
                lam, gam = method.raw_maps(torch.stack([s.image for s in samples[i:i + 16]]).to(method.device))
                out["local"].append(lam.cpu())
                out["global"].append(gam.cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    test = [data.test[i] for i in range(len(data.test))]
    val_maps, test_maps = maps([data.train[i] for i in val_idx]), maps(test)
    labels = np.array([s.label for s in test])
    masks = torch.stack([s.mask for s in test])
    size = test_maps["local"].shape[-1]
    band = max(1, round(args.band_px * size / int(config["data"]["image_size"])))
    print(f"{args.run}: {len(val_idx)} validation and {len(test)} test images; border band {args.band_px} px")
    print(f"{'map':40s} " + " ".join(f"{m:>11s}" for m in METRICS) + "  max on border")
    for branch in ("local", "global"):
        variants = {"as used (quantile normalised)": test_maps[branch]}
        for mode in ("subtract", "zscore"):
            try:
                norm = build("postprocess", "position_norm", mode=mode).fit(val_maps[branch])
            except SsmadError as exc:  # a z-score needs two validation images
                print(f"{branch}, position_norm {mode}: not computed ({exc})")
                continue
            variants[f"position_norm {mode}"] = norm(test_maps[branch])
        for name, m in variants.items():
            res = evaluate(labels, m.flatten(1).amax(1), masks, m, metrics=METRICS)
            r, c = np.divmod(m[:, 0].flatten(1).argmax(1).numpy(), size)
            near = np.minimum(np.minimum(r, c), np.minimum(size - 1 - r, size - 1 - c)) < band
            print(f"{branch + ', ' + name:40s} " + " ".join(f"{100 * res[k]:11.1f}" for k in METRICS)
                  + f"  {100 * near.mean():12.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
