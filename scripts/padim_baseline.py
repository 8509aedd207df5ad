"""A PaDiM baseline on the features and data split of a finished ALMRR run: how far a training-free model gets.

    .venv/bin/python scripts/padim_baseline.py RUN_DIR [--channels 200] [--ridge 0.01] [--device cpu]
        [--data KIND:PATH [--category C] [--data-param KEY=VALUE]]

PaDiM (Defard et al., 2021) models the backbone features at each position of the feature grid by one Gaussian,
fitted on normal images; an image's map is the Mahalanobis distance at each position. Here the features are the
run's own (its backbone, stages and feature grid: ``method.features``), the Gaussians are fitted on the images the
run trained on (its held-out images stay out, as in training), the covariance gets ``--ridge`` on its diagonal
(PaDiM's 0.01), and the map is upsampled to the input size and smoothed by the run's ``distance_smooth`` (a
Gaussian of sigma 4 px, as PaDiM). The image score is the map's maximum. Backbones with more than ``--channels``
channels use a random subset of that many (seed 0), as PaDiM does (100 of ResNet-18's 448), which bounds the
memory of the per-position covariances: channels² × positions × 8 bytes while fitting.

Prints the seven metrics of the test split and the table of each defect type against all normal test images,
the same tables as the run's own report (``report/metrics.md``, ``report/by_type/metrics.md``) for comparison.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser

    ap = run_parser(__doc__, "ALMRR", band=False, data=True)
    ap.add_argument("--channels", type=int, default=200,
                    help="at most this many feature channels, a random subset beyond it (default 200)")
    ap.add_argument("--ridge", type=float, default=0.01, help="added to the covariance diagonal (default 0.01)")
    args = ap.parse_args(argv)
    if args.channels < 1:
        ap.error(f"--channels: expected an integer >= 1, got {args.channels}")
    if not (args.ridge > 0 and np.isfinite(args.ridge)):
        ap.error(f"--ridge: expected a number > 0, got {args.ridge}")

    from apps.almrr import APP
    from apps.common import by_defect_type
    from ssmad.scoring import METRICS, evaluate

    if (opened := open_run(APP, args, "ALMRR", with_data=True)) is None:
        return 2
    _, method, run_data = opened
    data, train_idx = run_data.dataset, run_data.train_idx
    if len(train_idx) < 2 or len(data.test) == 0:
        print(f"error: {args.run}: PaDiM needs at least 2 training images and a test split", file=sys.stderr)
        return 2
    maps_np, scores_np, masks_np, (c, channels, grid, n) = padim_maps(method, data, train_idx, args.channels,
                                                                      args.ridge)
    labels = np.array(data.test.labels, dtype=int)
    rows = {"all": evaluate(labels, scores_np, masks_np, maps_np)}
    rows.update(by_defect_type("", data.test.defect_types, labels, scores_np, masks_np, maps_np))
    names = list(METRICS)
    print(f"{args.run}: PaDiM on the run's features ({c} of {channels} channels, {grid}×{grid} positions), fitted on "
          f"{n} training images; test split {len(labels)} images ({int(labels.sum())} anomalous)")
    print("| images | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key, res in rows.items():
        print(f"| {key.removeprefix(': ')} | " + " | ".join(f"{100 * res[m]:.1f}" for m in names) + " |")
    return 0


def padim_maps(method, data, train_idx: list[int], max_channels: int = 200, ridge: float = 0.01):
    """PaDiM on the ALMRR ``method``'s features: Gaussians per position fitted on ``data.train[train_idx]``, then
    the test split's maps (N × H × W, float32 numpy, smoothed as the run's distance), image scores (the maps'
    maxima), masks (N × H × W bool) and ``(channels used, backbone channels, grid, training images)``."""
    from apps.common import image_batches

    method.train(False)
    bs = method.eval_batch_size
    dev = method.device
    channels = sum(method.modules["backbone"].channels)
    keep = None
    if channels > max_channels:
        keep = torch.from_numpy(np.sort(np.random.default_rng(0).choice(channels, max_channels, replace=False)))

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = method.model.features(images)
        return (f if keep is None else f[:, keep.to(f.device)]).flatten(2).double()      # B × C × positions

    # per-position sums in float64: mean and covariance from one pass over the training images
    n, total, outer, grid = 0, None, None, None
    for _, images in image_batches([data.train[i] for i in train_idx], bs, dev):
        f = features(images)
        if total is None:
            grid = method.model.feature_size
            total = torch.zeros(f.shape[1:], dtype=torch.float64, device=dev)
            outer = torch.zeros(f.shape[2], f.shape[1], f.shape[1], dtype=torch.float64, device=dev)
        total += f.sum(0)
        outer += torch.einsum("bcp,bdp->pcd", f, f)
        n += f.shape[0]
    mean = total / n                                                                      # C × P
    cov = (outer - n * torch.einsum("cp,dp->pcd", mean, mean)) / (n - 1)
    c = cov.shape[-1]
    precision = torch.linalg.inv(cov + ridge * torch.eye(c, dtype=cov.dtype, device=dev)).float()
    mean = mean.float()
    del outer, cov

    maps, scores, masks = [], [], []
    for chunk, images in image_batches(data.test, bs, dev):
        masks += [(s.mask[0] > 0.5).numpy() if s.mask is not None else np.zeros(images.shape[-2:], bool)
                  for s in chunk]
        d = features(images).float() - mean
        dist = torch.einsum("bcp,pcd,bdp->bp", d, precision, d).clamp_min(0).sqrt().view(-1, 1, grid, grid)
        amap = F.interpolate(dist, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if method.distance.smooth is not None:
            amap = method.distance.smooth(amap)
        maps.append(amap[:, 0].cpu().numpy())
        scores.append(amap.flatten(1).amax(1).cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores), np.stack(masks), (c, channels, grid, n)


if __name__ == "__main__":
    sys.exit(main())
