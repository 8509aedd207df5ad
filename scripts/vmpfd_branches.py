"""Each VMPFD-AD map of a run alone, raw and normalised per position, and where its maxima lie.

    .venv/bin/python scripts/vmpfd_branches.py RUN_DIR [--band-px 16] [--device cpu]
        [--data KIND:PATH [--category C] [--data-param KEY=VALUE]]

Recomputes the local (LAM) and global (GAM) maps of the run's held-out normal validation images and of its test
images, and prints for each map image AUROC, pixel AUROC, pixel AP and AUPRO: as the run uses it (its quantile
normalisation is monotone, so the figures are those of the raw map), and after a per-position normalisation
fitted on the validation maps (``position_norm``: the mean subtracted, or a z-score) — the correction that ALMRR's
distance map needs — plus the share of test images whose maximum lies within ``--band-px`` of the image border,
and on the held-out normal images the mean raw map in that border band over its mean inside (1: no border effect).
For reference it also scores the local branch's own input, the frozen PDN features pooled to the method's grid,
with three simple models in place of the mixture density network, fitted on the run's training images (100
seeded random channels): a Gaussian per position (PaDiM-style, covariance + 0.01·I, Mahalanobis distance), one
Gaussian for all positions, and the distance to the nearest training feature at any position. docs/history/results-mt.md
reports these for the Magnetic-tile-defect runs.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro"]


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser

    args = run_parser(__doc__, "VMPFD-AD", data=True).parse_args(argv)

    from apps.common import image_batches
    from apps.vmpfd import APP
    from ssmad.core import SsmadError, build
    from ssmad.scoring import evaluate

    if (opened := open_run(APP, args, "VMPFD-AD", with_data=True)) is None:
        return 2
    _, method, run_data = opened
    config, data, train_idx, val_idx = run_data.config, run_data.dataset, run_data.train_idx, run_data.val_idx
    if not val_idx or len(data.test) == 0:
        print(f"error: {args.run}: needs held-out normal images and a test split", file=sys.stderr)
        return 2

    def pdn_references(fit_samples, samples, channels: int = 100) -> dict[str, torch.Tensor]:
        """Maps (N×1×H×W) of three simple density models of the pooled PDN features in place of the network."""
        def pooled(ss) -> torch.Tensor:                                  # N×channels×grid×grid, float64
            with torch.no_grad():
                parts = [method.model.pdn_features(images).cpu() for _, images in image_batches(ss, 16, method.device)]
            return torch.cat(parts)[:, keep].double()

        def nearest(x: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:   # in chunks of x
            return torch.cat([torch.cdist(x[i:i + chunk], bank).min(1).values for i in range(0, len(x), chunk)])

        def mahalanobis(fit: torch.Tensor, x: torch.Tensor) -> torch.Tensor:   # (P×)n×c, (P×)m×c → (P×)m
            mean = fit.mean(-2, keepdim=True)
            eye = 0.01 * torch.eye(fit.shape[-1], dtype=torch.float64)
            cov = (fit - mean).transpose(-1, -2) @ (fit - mean) / max(1, fit.shape[-2] - 1) + eye
            d = x - mean
            return ((d @ torch.linalg.inv(cov)) * d).sum(-1).clamp_min(0).sqrt()

        keep = torch.randperm(int(sum(method.modules["pdn"].channels)), generator=torch.Generator().manual_seed(0))
        keep = keep[:channels]
        fit, x = pooled(fit_samples), pooled(samples)
        n, c, g = fit.shape[0], fit.shape[1], fit.shape[-1]
        by_pos = fit.permute(2, 3, 0, 1).reshape(g * g, n, c), x.permute(2, 3, 0, 1).reshape(g * g, len(x), c)
        flat = fit.permute(0, 2, 3, 1).reshape(-1, c), x.permute(0, 2, 3, 1).reshape(-1, c)
        dists = {"per-position Gaussian": mahalanobis(*by_pos).T,
                 "one Gaussian for all positions": mahalanobis(*flat).reshape(len(x), g * g),
                 "nearest training feature": nearest(flat[1].float(), flat[0].float()).reshape(len(x), g * g)}
        size = tuple(samples[0].image.shape[-2:])
        return {k: F.interpolate(v.reshape(-1, 1, g, g).float(), size=size, mode="bilinear", align_corners=False)
                for k, v in dists.items()}

    def maps(samples) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {"local": [], "global": []}
        with torch.no_grad():
            for _, images in image_batches(samples, 16, method.device):
                lam, gam = method.raw_maps(images)
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
    print(f"{'map':46s} " + " ".join(f"{m:>11s}" for m in METRICS) + "  max on border")

    def row(name: str, m: torch.Tensor) -> None:
        res = evaluate(labels, m.flatten(1).amax(1), masks, m, metrics=METRICS)
        r, c = np.divmod(m[:, 0].flatten(1).argmax(1).numpy(), size)
        near = np.minimum(np.minimum(r, c), np.minimum(size - 1 - r, size - 1 - c)) < band
        print(f"{name:46s} " + " ".join(f"{100 * res[k]:11.1f}" for k in METRICS) + f"  {100 * near.mean():12.1f}%")

    def border_ratio(m: torch.Tensor) -> float:   # mean map value in the border band over the interior's
        inside = torch.zeros(m.shape[-2:], dtype=torch.bool)
        inside[band:-band, band:-band] = True
        return float(m[..., ~inside].mean() / m[..., inside].mean())

    print("held-out normal images, mean raw map in the border band / in the interior: " + ", ".join(
        f"{b} {border_ratio(val_maps[b]):.2f}" for b in ("local", "global")))
    for branch in ("local", "global"):
        row(f"{branch}, as used (quantile normalised)", test_maps[branch])
        for mode in ("subtract", "zscore"):
            try:
                norm = build("normaliser", "position_norm", mode=mode).fit(val_maps[branch])
            except SsmadError as exc:  # a z-score needs two validation images
                print(f"{branch}, position_norm {mode}: not computed ({exc})")
                continue
            row(f"{branch}, position_norm {mode}", norm(test_maps[branch]))
    for name, m in pdn_references([data.train[i] for i in train_idx], test).items():
        row(f"PDN features, {name}", m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
