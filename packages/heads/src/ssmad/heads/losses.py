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


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def blur_matrix(n: int, window: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """The n×n matrix M of a 1-D Gaussian blur with the borders padded by reflection (as ``F.pad(mode="reflect")``):
    ``x @ M`` blurs the last axis of ``x`` (M[i, j]: the weight of input i in output j). A ValueError when the
    reflection would need more than n - 1 samples (window // 2 >= n)."""
    pad = window // 2
    if pad >= n:
        raise ValueError(f"gaussian blur: a window of {window} needs images larger than {pad} pixels, got {n}")
    g = _gaussian_1d(window, sigma, device, dtype)
    out = torch.arange(n, device=device).repeat_interleave(window)            # output j, once per tap
    src = out + torch.arange(-pad, pad + 1, device=device).repeat(n)          # the tap's input before reflection
    src = torch.where(src < 0, -src, torch.where(src > n - 1, 2 * (n - 1) - src, src))
    m = torch.zeros(n, n, device=device, dtype=dtype)
    return m.index_put_((src, out), g.repeat(n), accumulate=True)


def gaussian_blur(t: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Each channel of B×C×H×W ``t`` convolved with the ``window``-sided Gaussian (σ ``sigma``), borders padded
    by reflection, size kept, differentiable: the 2-D window as its two 1-D factors, each a product with a
    :func:`blur_matrix` (dense matrix products run far faster than depthwise convolutions and need no padding)."""
    h, w = t.shape[-2:]
    mw = blur_matrix(w, window, sigma, t.device, t.dtype)
    mh = mw if h == w else blur_matrix(h, window, sigma, t.device, t.dtype)
    return mh.t() @ (t @ mw)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window 11, σ 1.5, K1 0.01, K2 0.03), differentiable.

    ``data_range`` is the span of the inputs (2 for images in [-1, 1]). ``reduction="none"`` returns the SSIM map
    B×1×H×W (channel mean, 'valid' borders padded by reflection so the size is kept). The five local moments are
    blurred in one call (:func:`gaussian_blur`)."""
    c = x.shape[1]
    mx, my, exx, eyy, exy = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], 1), window, sigma).split(c, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    s = s.mean(1, keepdim=True)
    return s.mean() if reduction == "mean" else s
