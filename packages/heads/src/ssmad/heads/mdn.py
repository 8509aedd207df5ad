"""VMPFD-AD's Gaussian mixture density head (PFDMM): per-position mixture parameters and their NLL.

For a feature map ``T: B×C×h×w`` a three-layer network predicts at every position ``K`` isotropic Gaussian
components: log-weights ``log π`` (log-softmax over ``K``), means ``μ_k ∈ ℝ^C`` (linear) and standard deviations
``σ_k = softplus(·) + σ_min``. The anomaly score at ``(h, w)`` is the mixture negative log-likelihood of
``T[:, :, h, w]``, divided by ``C`` so it is a per-dimension figure (comparable across feature widths)::

    nll = -(1/C) · log Σ_k π_k · N(t; μ_k, σ_k² I)
        = -(1/C) · logsumexp_k[ log π_k - C/2·log 2π - C·log σ_k - ‖t - μ_k‖² / (2σ_k²) ]

Why it cannot collapse to an identity (every input equally, arbitrarily likely):

- the mixture parameters are computed through a ``bottleneck``-wide layer, much narrower than ``C``: ``μ`` lies
  in (a neighbourhood of) a low-dimensional manifold and cannot copy an arbitrary ``t``, so off-manifold
  (anomalous) features keep a large residual;
- ``σ ≥ σ_min``, so the NLL is bounded below by ``½·log 2π + log σ_min`` per dimension
  (:meth:`MixtureDensityHead.nll_lower_bound`) and the loss cannot be driven to ``-∞`` by shrinking ``σ``;
- ``position = true`` (with the map's ``grid``) adds a learned embedding of each position to the first layer's
  output: the mixture may then differ from place to place (on aligned images, normal differs with the position),
  still through the bottleneck and above the σ floor;
- with ``context="neighbours"`` the first layer is a 3×3 convolution with its centre tap masked to zero (a
  blind spot; reflect padding at the borders, which never maps a position onto itself), and the later layers
  are 1×1: position ``(h, w)``'s own feature never enters its prediction, so the head is a true conditional
  density ``p(t_hw | neighbours)``.

``tests/heads/test_mdn.py`` trains the head on a low-dimensional Gaussian cluster and shows that in-distribution
features score clearly lower than out-of-distribution ones, for both contexts.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import ConfigError, configclass, field, positive

LOG_2PI = math.log(2.0 * math.pi)


@configclass
class MDNConfig:
    """Parameters of the ``mdn`` head."""

    in_channels: int = field(validator=positive)
    n_components: int = field(default=4, validator=positive)
    hidden: int = field(default=128, validator=positive)
    bottleneck: int = field(default=32, validator=positive)
    sigma_min: float = field(default=0.05, validator=positive)
    context: Literal["self", "neighbours"] = "self"
    position: bool = False   # a learned embedding per position of the grid × grid map (the method gives ``grid``)
    grid: int = field(default=0, validator=lambda inst, attr, v: v >= 0)


class BlindSpotConv2d(nn.Conv2d):
    """3×3 convolution whose centre tap is always zero: output ``(h, w)`` never sees input ``(h, w)``.

    Borders are reflect-padded (zero-padded for maps narrower than 2), so padding never re-introduces the centre.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=0)
        mask = torch.ones(1, 1, 3, 3)
        mask[..., 1, 1] = 0.0
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(x.shape[-2:]) >= 2 else "constant"
        x = F.pad(x, (1, 1, 1, 1), mode=mode)
        return F.conv2d(x, self.weight * self.mask, self.bias)


class MixtureDensityHead(nn.Module):
    """``forward(t) -> (log_pi B×K×h×w, mu B×K×C×h×w, sigma B×K×h×w)``; ``nll(t) -> B×h×w`` (per dimension)."""

    def __init__(self, in_channels: int, n_components: int = 4, hidden: int = 128, bottleneck: int = 32,
                 sigma_min: float = 0.05, context: str = "self", grid: int = 0) -> None:
        """``grid`` > 0: a learned embedding of each of the grid × grid positions (inputs must be that size)."""
        super().__init__()
        if context not in ("self", "neighbours"):
            raise ConfigError(f"mdn: context must be 'self' or 'neighbours', got {context!r}")
        if sigma_min <= 0:
            raise ConfigError(f"mdn: sigma_min must be > 0, got {sigma_min}")
        self.in_channels, self.n_components = in_channels, n_components
        self.sigma_min, self.context = float(sigma_min), context
        first = BlindSpotConv2d(in_channels, hidden) if context == "neighbours" else nn.Conv2d(in_channels, hidden, 1)
        k, c = n_components, in_channels
        self.net = nn.Sequential(first, nn.GELU(), nn.Conv2d(hidden, bottleneck, 1), nn.GELU(),
                                 nn.Conv2d(bottleneck, k + k * c + k, 1))
        self.grid = int(grid)
        # zero at the start: the head begins as the position-free one and learns what the place adds
        self.position = nn.Parameter(torch.zeros(1, hidden, grid, grid)) if grid > 0 else None

    def nll_lower_bound(self) -> float:
        """Per-dimension NLL can never be below ``½·log 2π + log σ_min`` (each component's density peak)."""
        return 0.5 * LOG_2PI + math.log(self.sigma_min)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if t.ndim != 4 or t.shape[1] != self.in_channels:
            raise ConfigError(f"mdn: expected features B×{self.in_channels}×h×w, got {tuple(t.shape)}")
        b, _, h, w = t.shape
        k, c = self.n_components, self.in_channels
        x = self.net[0](t.contiguous())  # strided (e.g. permuted) inputs take a much slower conv path on CPU
        if self.position is not None:
            if (h, w) != (self.grid, self.grid):
                raise ConfigError(f"mdn: position = true was built for a {self.grid}×{self.grid} map, got {h}×{w}")
            x = x + self.position.to(x.dtype)
        for layer in self.net[1:]:
            x = layer(x)
        out = x
        logits, mu, raw_sigma = torch.split(out, [k, k * c, k], dim=1)
        log_pi = torch.log_softmax(logits, dim=1)
        mu = mu.reshape(b, k, c, h, w)
        sigma = F.softplus(raw_sigma, beta=1.0) + self.sigma_min
        return log_pi, mu, sigma

    def nll(self, t: torch.Tensor,
            params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mixture negative log-likelihood of ``t`` at each position, divided by ``C``: B×h×w.

        ``params`` are this head's ``forward(t)`` output (computed when omitted). Computed in float32 with a
        log-sum-exp over the components.
        """
        log_pi, mu, sigma = self(t) if params is None else params
        c = t.shape[1]
        tf, mu, sigma, log_pi = t.float(), mu.float(), sigma.float(), log_pi.float()
        sq = (tf.unsqueeze(1) - mu).pow(2).sum(dim=2)  # B×K×h×w
        log_comp = -0.5 * c * LOG_2PI - c * torch.log(sigma) - sq / (2.0 * sigma.pow(2))
        return -torch.logsumexp(log_pi + log_comp, dim=1) / c


def build_mdn(cfg: MDNConfig) -> MixtureDensityHead:
    """Gaussian mixture density head (VMPFD PFDMM): per-position π, μ, σ and the mixture NLL map."""
    if cfg.position and cfg.grid < 1:
        raise ConfigError("mdn: position = true needs the map's grid (the method passes it)")
    return MixtureDensityHead(cfg.in_channels, cfg.n_components, cfg.hidden, cfg.bottleneck, cfg.sigma_min,
                              cfg.context, cfg.grid if cfg.position else 0)
