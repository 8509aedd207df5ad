"""ALMRR's feature refinement module (FRM): a discriminative U-Net in the layout of DRAEM's.

Encoder: ``levels`` levels of two ``conv3×3 + BN + ReLU`` with a 2×2 max-pool between levels; the width of
level ``i`` is ``base_width * min(2**i, 8)`` (64/128/256/512/512/512 for the defaults). Decoder: one up-step per
skip (``levels - 1`` of them): bilinear ×2 upsampling and ``conv3×3 + BN + ReLU`` to the width of the level
*below* the skip, concatenation with the skip, two ``conv3×3 + BN + ReLU``; a final 1×1 convolution gives the
class logits. The input side must be divisible by ``2**(levels - 1)`` (64×64 with 6 levels: a 2×2 bottleneck).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import ConfigError, configclass, field, positive

from .layers import conv_bn_relu


@configclass
class RefinerConfig:
    """Parameters of the ``refiner`` head."""

    in_channels: int = field(default=2, validator=positive)
    out_channels: int = field(default=2, validator=positive)
    base_width: int = field(default=64, validator=positive)
    levels: int = field(default=6, validator=positive)


def level_widths(base_width: int, levels: int) -> list[int]:
    """Encoder widths: ``base * min(2**i, 8)`` for level ``i``."""
    return [base_width * min(2 ** i, 8) for i in range(levels)]


class _UpStep(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                *conv_bn_relu(c_in, c_out))
        self.fuse = nn.Sequential(*conv_bn_relu(c_out + c_skip, c_out), *conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # cannot happen for sizes divisible by 2**(levels-1); kept safe
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


class RefinerUNet(nn.Module):
    """Discriminative U-Net: ``forward(x: B×in_channels×S×S) -> logits B×out_channels×S×S``."""

    def __init__(self, in_channels: int = 2, out_channels: int = 2, base_width: int = 64, levels: int = 6) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.in_channels, self.out_channels, self.levels = in_channels, out_channels, levels
        widths = level_widths(base_width, levels)
        self.widths = widths
        self.encoder = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoder.append(nn.Sequential(*conv_bn_relu(c, w), *conv_bn_relu(w, w)))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList()
        for t in range(levels - 2, -1, -1):  # skip level t, deepest first
            out = widths[max(t - 1, 0)]
            self.decoder.append(_UpStep(c, widths[t], out))
            c = out
        self.head = nn.Conv2d(c, out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """The input side must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"refiner: expected input B×{self.in_channels}×H×W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ConfigError(f"refiner: input size {h}×{w} must be divisible by {self.multiple} "
                              f"(levels={self.levels}); resize the input or lower 'levels'")
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for step, skip in zip(self.decoder, reversed(skips[:-1])):
            x = step(x, skip)
        return self.head(x)


def build_refiner(cfg: RefinerConfig) -> RefinerUNet:
    """FRM U-Net (DRAEM-style discriminative): B×C_in×S×S → 2-class logits B×2×S×S."""
    return RefinerUNet(cfg.in_channels, cfg.out_channels, cfg.base_width, cfg.levels)
