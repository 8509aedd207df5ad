"""ALMRR feature reconstructors (MFRM and its ablations): ``forward(F: B×C×S×S) -> F̂: B×C×S×S``.

All four share :class:`FeatureReconstructor`::

    1×1 conv C→hidden → token encoder (hidden×S×S → d_model×S/p×S/p) → decoder → bilinear to S×S → 1×1 conv hidden→C

The decoder is a chain of transposed 3×3 convolutions ``d_model → decoder_widths… → hidden`` (stride 1 without
padding, each growing the map by 2, then a last stride-2 one with padding 1), with InstanceNorm + ReLU between
and tanh after the last (ALMRR's public code: 192→256→512→1024, 16×16 → 18 → 20 → 39, then bilinear to 64).
Only the token encoder differs between the registered names:

- ``vim``: :class:`ssmad.ssm.ViMEncoder` (bidirectional Mamba blocks) — the MFRM;
- ``cnn1x1`` / ``cnn3x3``: :class:`~ssmad.heads.blocks.TokenEncoder` with ``depth`` conv blocks of kernel 1 / 3;
- ``transformer``: :class:`~ssmad.heads.blocks.TokenEncoder` with ``depth`` pre-norm Transformer blocks.

The token encoders share patch embedding (conv ``k = s = patch``), learned position embedding, token grid, width
and final RMSNorm (the ablations take them from a block-less ``ViMEncoder``), so the ablations isolate the mixer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import ConfigError, configclass, field, in_range, non_empty, positive
from ssmad.ssm import ViMEncoder

from .blocks import ConvBlock, TokenEncoder, TransformerBlock
from .layers import check_widths, drop_path_schedule


def _divisible(inst, attribute, value) -> None:
    if inst.feature_size % inst.patch:
        raise ValueError(f"parameter 'feature_size' ({inst.feature_size}) must be divisible by 'patch' ({inst.patch})")


@configclass
class ReconstructorConfig:
    """Parameters common to the feature reconstructors (the ``cnn1x1`` / ``cnn3x3`` config)."""

    in_channels: int = field(default=1792, validator=positive)
    hidden: int = field(default=1024, validator=positive)
    feature_size: int = field(default=64, validator=positive)
    patch: int = field(default=4, validator=[positive, _divisible])
    d_model: int = field(default=192, validator=positive)
    depth: int = field(default=8, validator=positive)
    drop_path: float = field(default=0.1, validator=in_range(0.0, 0.99))
    decoder_widths: tuple[int, ...] = field(default=(256, 512), validator=non_empty)

    def __attrs_post_init__(self) -> None:
        if any(w <= 0 for w in self.decoder_widths):
            raise ValueError(f"parameter 'decoder_widths' must hold positive integers, got {list(self.decoder_widths)}")


@configclass
class ViMReconstructorConfig(ReconstructorConfig):
    """Parameters of the ``vim`` reconstructor (MFRM)."""

    d_state: int = field(default=16, validator=positive)
    scan: str = "auto"


@configclass
class TransformerReconstructorConfig(ReconstructorConfig):
    """Parameters of the ``transformer`` reconstructor ablation."""

    heads: int = field(default=3, validator=positive)
    mlp_ratio: float = field(default=4.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.d_model % self.heads:
            raise ValueError(f"parameter 'd_model' ({self.d_model}) must be divisible by 'heads' ({self.heads})")


def feature_decoder(d_model: int, widths: Sequence[int], out_channels: int) -> nn.Sequential:
    """Transposed-conv decoder: ``d_model → widths… → out_channels`` (k3 s1 p0 each, the last k3 s2 p1),
    InstanceNorm + ReLU between, tanh last."""
    chans = [d_model, *check_widths(widths, "decoder_widths"), out_channels]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
        last = i == len(chans) - 2
        if last:
            layers += [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1), nn.Tanh()]
        else:
            layers += [nn.ConvTranspose2d(c_in, c_out, 3), nn.InstanceNorm2d(c_out, affine=True),
                       nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def decoder_output_size(grid: int, n_convs: int) -> int:
    """Side of :func:`feature_decoder`'s output for a ``grid``-sided input and ``n_convs`` transposed convs."""
    side = grid + 2 * (n_convs - 1)
    return (side - 1) * 2 - 2 + 3


class FeatureReconstructor(nn.Module):
    """The shared MFRM skeleton: ``reduce (1×1) → encoder → decoder → resize → expand (1×1)``.

    ``encoder`` maps ``B×hidden×S×S`` to ``B×d_model×h×w`` (a ViM, CNN or Transformer token encoder).
    """

    def __init__(self, in_channels: int, hidden: int, feature_size: int, encoder: nn.Module, d_model: int,
                 decoder_widths: Sequence[int] = (256, 512)) -> None:
        super().__init__()
        self.in_channels, self.hidden, self.feature_size, self.d_model = in_channels, hidden, feature_size, d_model
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.encoder = encoder
        self.decoder = feature_decoder(d_model, decoder_widths, hidden)
        self.expand = nn.Conv2d(hidden, in_channels, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        s = self.feature_size
        if feats.ndim != 4 or feats.shape[1] != self.in_channels or tuple(feats.shape[-2:]) != (s, s):
            raise ConfigError(f"reconstructor: expected features B×{self.in_channels}×{s}×{s}, got "
                              f"{tuple(feats.shape)}")
        z = self.encoder(self.reduce(feats))
        y = self.decoder(z)
        if tuple(y.shape[-2:]) != (s, s):
            y = F.interpolate(y, size=(s, s), mode="bilinear", align_corners=False)
        return self.expand(y)


def _skeleton(cfg: ReconstructorConfig, encoder: nn.Module) -> FeatureReconstructor:
    return FeatureReconstructor(cfg.in_channels, cfg.hidden, cfg.feature_size, encoder, cfg.d_model,
                                cfg.decoder_widths)


def build_vim(cfg: ViMReconstructorConfig) -> FeatureReconstructor:
    """MFRM: feature reconstructor with bidirectional Vision Mamba blocks (ALMRR)."""
    encoder = ViMEncoder(cfg.hidden, cfg.feature_size, cfg.patch, cfg.d_model, cfg.depth, drop_path=cfg.drop_path,
                         d_state=cfg.d_state, scan=cfg.scan)
    return _skeleton(cfg, encoder)


def _conv(cfg: ReconstructorConfig, kernel: int) -> FeatureReconstructor:
    rates = drop_path_schedule(cfg.drop_path, cfg.depth)
    blocks = [ConvBlock(cfg.d_model, kernel, drop_path=r) for r in rates]
    return _skeleton(cfg, TokenEncoder(cfg.hidden, cfg.feature_size, cfg.patch, cfg.d_model, blocks))


def build_cnn1x1(cfg: ReconstructorConfig) -> FeatureReconstructor:
    """Reconstructor ablation: the Mamba blocks replaced by 1×1 conv blocks (channel mixing only)."""
    return _conv(cfg, 1)


def build_cnn3x3(cfg: ReconstructorConfig) -> FeatureReconstructor:
    """Reconstructor ablation: the Mamba blocks replaced by 3×3 conv blocks (local mixing)."""
    return _conv(cfg, 3)


def build_transformer(cfg: TransformerReconstructorConfig) -> FeatureReconstructor:
    """Reconstructor ablation: the Mamba blocks replaced by pre-norm Transformer encoder blocks."""
    rates = drop_path_schedule(cfg.drop_path, cfg.depth)
    blocks = [TransformerBlock(cfg.d_model, cfg.heads, cfg.mlp_ratio, drop_path=r) for r in rates]
    return _skeleton(cfg, TokenEncoder(cfg.hidden, cfg.feature_size, cfg.patch, cfg.d_model, blocks))


__all__ = ["FeatureReconstructor", "ReconstructorConfig", "TransformerReconstructorConfig", "ViMReconstructorConfig",
           "build_cnn1x1", "build_cnn3x3", "build_transformer", "build_vim", "decoder_output_size",
           "feature_decoder"]
