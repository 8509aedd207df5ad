"""Training losses of the heads: focal + dice (ALMRR's refiner) and a differentiable SSIM (VMPFD-AD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Binary-segmentation focal loss on 2-class logits B×2×H×W against a {0,1} mask B×1×H×W (mean over pixels)."""
    logp = F.log_softmax(logits.float(), dim=1)
    t = target.float().squeeze(1).clamp(0, 1)
    logp_t = logp[:, 1] * t + logp[:, 0] * (1 - t)
    p_t = logp_t.exp().clamp(eps, 1.0)
    return (-(1 - p_t) ** gamma * logp_t).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss of the anomalous-class probability B×1×H×W against the mask, per image then averaged.

    ``eps`` (additive smoothing) keeps clean samples (empty masks) from dominating: an empty prediction on an
    empty mask scores a loss of 0."""
    p = prob.float().flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window 11, σ 1.5, K1 0.01, K2 0.03), differentiable.

    ``data_range`` is the span of the inputs (2 for images in [-1, 1]). ``reduction="none"`` returns the SSIM map
    B×1×H×W (channel mean, 'valid' borders padded by reflection so the size is kept)."""
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    pad = window // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    s = s.mean(1, keepdim=True)
    return s.mean() if reduction == "mean" else s
