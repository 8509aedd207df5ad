"""ALMRR's networks as one ``nn.Module`` with no training glue: frozen backbone → Mamba feature reconstruction
(MFRM) → refinement U-Net (FRM). The method (apps/almrr/method.py) trains it and adds the fitted distance branch
(apps/almrr/distance.py); an export traces it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssmad.backbones import concat_stages

from ..common.networks import Networks


def squared_distance(recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """‖F̂ − F‖² per position (mean over channels), B×1×S×S."""
    return ((recon - feats) ** 2).mean(1, keepdim=True)


class ALMRRModel(Networks):
    """``backbone`` (frozen, multi-stage), ``reconstructor`` (C channels on the S×S grid) and optionally
    ``refiner`` (2 classes).

    ``feature_size`` S: the grid every backbone stage is resized to; ``refiner_inputs``: the refiner's input
    channels, from ``recon_mean`` and ``feature_mean`` (the paper's two channel means) and ``distance`` (log of
    :func:`squared_distance`, whose range spans decades)."""

    def __init__(self, backbone: nn.Module, reconstructor: nn.Module, refiner: nn.Module | None, *,
                 feature_size: int, refiner_inputs: Sequence[str], precision: str = "fp32",
                 device: torch.device | None = None, channels_last: bool = False) -> None:
        modules = {"backbone": backbone, "reconstructor": reconstructor}
        if refiner is not None:
            modules["refiner"] = refiner
        super().__init__(modules, precision, device, channels_last)
        self.feature_size = int(feature_size)
        self.refiner_inputs = tuple(refiner_inputs)

    @torch.no_grad()
    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage outputs of B×3×H×W images (fp32, no gradient: it is frozen)."""
        return list(self.run("backbone", images))

    def join(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Stage outputs (:meth:`stages`) resized to S×S and concatenated: B×C×S×S."""
        return concat_stages(stages, self.feature_size)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's stages of B×3×H×W images, resized to S×S and concatenated: B×C×S×S (no gradient: it is
        frozen)."""
        return self.join(self.stages(images))

    def reconstruct(self, feats: torch.Tensor) -> torch.Tensor:
        """F̂ of F (B×C×S×S)."""
        return self.run("reconstructor", feats)

    def refine(self, recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The refiner's logits B×2×S×S from F̂ and F; a KeyError without a refiner."""
        parts = {"recon_mean": lambda: recon.mean(1, keepdim=True),
                 "feature_mean": lambda: feats.mean(1, keepdim=True),
                 "distance": lambda: squared_distance(recon, feats).clamp_min(1e-8).log()}
        return self.run("refiner", torch.cat([parts[k]() for k in self.refiner_inputs], 1))

    def forward(self, images: torch.Tensor, feats: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(F, F̂, logits)`` of B×3×H×W images (logits None without a refiner); ``feats``: their F when already
        computed (the images are then not read)."""
        feats = self.features(images) if feats is None else feats
        recon = self.reconstruct(feats)
        return feats, recon, (self.refine(recon, feats) if "refiner" in self else None)
