"""Why VMPFD-AD's global map is high on the image border: the autoencoder's error against the images' own detail.

    .venv/bin/python scripts/vmpfd_global_error.py RUN_DIR [--band-px 16] [--device cpu] [--seed 0]
        [--data KIND:PATH [--category C] [--data-param KEY=VALUE]]

On the run's held-out normal validation images (never trained on, never the test split) it prints, for the
``--band-px`` border band against the interior, the mean of: the images' high-frequency energy (the squared
difference between an image and its Gaussian blur, σ = 1, 2, 4 px), the raw reconstruction error, and the
per-image correlation of the two (both Gaussian-smoothed, σ = 4); then the mean error and detail of the first rows.
A ratio of detail near the error's says the error follows what is in the images, not where it is.

Then it scores error maps other than the paper's on the same held-out images and one synthetic anomaly of each
(the ``perlin`` synthesiser, no clean draws, scikit-image textures): the paper's squared error, the error of the
low-passed reconstruction against the low-passed image (σ = 2, 4: detail the autoencoder cannot reproduce left
out), and the error divided by the image's local detail energy; each alone and fused with the run's local map as
the run fuses (quantile normalised on the held-out normal images, equal weights): image AUROC, pixel AUROC, pixel
AP and the border / interior ratio on the normal images.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ["image_auroc", "pixel_auroc", "pixel_ap"]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B×C×H×W, mirrored border."""
    c, k = x.shape[1], int(3 * sigma) * 2 + 1
    t = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.pad(x, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser, with_synthetic_anomalies

    ap = run_parser(__doc__, "VMPFD-AD", data=True)
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic anomalies (default 0)")
    args = ap.parse_args(argv)

    from apps.vmpfd import APP
    from ssmad.scoring import evaluate

    if (opened := open_run(APP, args, "VMPFD-AD", with_data=True)) is None:
        return 2
    _, method, run_data = opened
    held = [run_data.dataset.train[i].image for i in run_data.val_idx]
    if not held:
        print(f"error: {args.run}: the run held out no normal images", file=sys.stderr)
        return 2
    images, labels, pixel = with_synthetic_anomalies(held, args.seed)
    n = len(held)
    recon, local = [], []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            x = images[i:i + 16].to(method.device)
            r, nll, _ = method.model(x)
            recon.append(r.float().cpu())
            local.append(F.interpolate(nll[:, None].float().cpu(), size=x.shape[-2:], mode="bilinear",
                                       align_corners=False))
    recon, local, target = torch.cat(recon), torch.cat(local), images * 2 - 1
    size = images.shape[-1]
    band = max(1, round(args.band_px * size / int(run_data.config["data"]["image_size"])))
    inside = torch.zeros(images.shape[-2:], dtype=torch.bool)
    inside[band:-band, band:-band] = True

    def ratio(m: torch.Tensor) -> float:   # on the normal images: border band mean over interior mean
        return float(m[:n][..., ~inside].mean() / m[:n][..., inside].mean())

    def energy(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean(1, keepdim=True)

    err = energy(recon - target)
    print(f"{args.run}: {n} held-out normal images; border band {args.band_px} px")
    print("border / interior on the normal images: " + ", ".join(
        f"detail σ={s} {ratio(energy(target - blur(target, s))):.2f}" for s in (1, 2, 4))
        + f", reconstruction error {ratio(err):.2f}")
    detail = energy(target - blur(target, 2))
    corr = [float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
            for a, b in zip(blur(detail[:n], 4), blur(err[:n], 4))]
    print(f"correlation of smoothed error and smoothed detail per normal image: mean {np.mean(corr):.2f}, "
          f"min {np.min(corr):.2f}")
    rows = err[:n].mean((0, 1, 3)), detail[:n].mean((0, 1, 3))
    mid = slice(size // 2 - size // 8, size // 2 + size // 8)
    print("rows 0, 2, 4, 8 / the middle quarter: error " + " ".join(f"{float(rows[0][i]):.4f}" for i in (0, 2, 4, 8))
          + f" / {float(rows[0][mid].mean()):.4f}; detail " + " ".join(f"{float(rows[1][i]):.4f}" for i in (0, 2, 4, 8))
          + f" / {float(rows[1][mid].mean()):.4f}")

    hp = blur(detail, 4)
    variants = {
        "squared error (the paper's)": blur(err, 4),
        "low-passed σ=2, squared error": blur(energy(blur(recon, 2) - blur(target, 2)), 4),
        "low-passed σ=4, squared error": blur(energy(blur(recon, 4) - blur(target, 4)), 4),
        "squared error / local detail": blur(err, 4) / (hp + hp[:n].mean()),
    }

    def normalised(m: torch.Tensor) -> torch.Tensor:   # the 0.9 / 0.995 quantiles of the normal images' pixels
        ref = m[:n].flatten()[::7]
        lo, hi = torch.quantile(ref, 0.9), torch.quantile(ref, 0.995)
        return (m - lo) / (hi - lo).clamp_min(1e-12)

    def scores(m: torch.Tensor) -> str:
        res = evaluate(labels, m.flatten(1).amax(1).numpy(), pixel, m[:, 0].numpy(), metrics=METRICS)
        return " ".join(f"{100 * res[k]:6.1f}" for k in METRICS)

    print(f"\n{'global map (held-out + synthetic)':34s} {'alone: img AUROC, pix AUROC, pix AP':>36s}  border"
          f"  {'fused with the local map':>24s}")
    for name, m in variants.items():
        fused = 0.5 * normalised(local) + 0.5 * normalised(m)
        print(f"{name:34s} {scores(m):>36s} {ratio(m):7.2f}  {scores(fused):>24s}")
    print(f"{'local map alone':34s} {scores(local):>36s} {ratio(local):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
