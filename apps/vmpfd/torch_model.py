"""VMPFD-AD's networks as one ``nn.Module`` with no training glue: the frozen PDN and its adapter G_θ, the ViM
autoencoder and the mixture density head (apps/vmpfd/method.py trains them and normalises their maps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import ConfigError

from ..common.distributed import batch_moments
from ..common.networks import Networks


class Adapter(nn.Sequential):
    """G_θ: a 1×1 convolution followed by a per-channel standardisation (batch norm without affine parameters).

    :meth:`forward_with_volume` also returns its log-volume, ``½·log det(W Wᵀ)`` of the effective linear map
    ``W = diag(1/s)·G`` (``G`` the convolution's ``out×in`` weight, ``s`` the batch's per-channel standard
    deviation that the batch norm divides by in training): the log of the volume factor by which the adapter maps
    its input's row space onto T. It falls to −∞ as G's rows become linearly dependent, the low-rank collapse that
    the NLL alone rewards.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        if out_channels > in_channels:
            raise ConfigError(f"method.adapter_dim: the adapter maps {in_channels} PDN channels to "
                              f"{out_channels}; it must not widen them (its log-volume needs out <= in)")
        super().__init__(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels, affine=False))

    def forward_with_volume(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T, log-volume)`` for a training batch (the standard deviation is the batch's, as the norm's)."""
        conv, norm = self[0], self[1]
        y = conv(x)
        std = (batch_moments(y)[1] + norm.eps).sqrt()   # the global batch's in a distributed training
        w = (conv.weight.flatten(1) / std[:, None]).double()
        return norm(y), 0.5 * torch.linalg.slogdet(w @ w.T).logabsdet.to(y.dtype)


class VMPFDModel(Networks):
    """``pdn`` (frozen), ``autoencoder``, ``adapter``, ``latent_norm`` (absent with ``local_features = "pdn"``) and
    ``density``. ``grid``: the grid both feature maps share; ``pdn_size``: the PDN's input size;
    ``local_features``: "sum", "concat" or "pdn" (how T is made of the adapted PDN features and the encoder map)."""

    def __init__(self, modules: dict[str, nn.Module], *, grid: int, pdn_size: int, local_features: str,
                 precision: str = "fp32", device: torch.device | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(modules, precision, device, channels_last)
        self.grid, self.pdn_size, self.local_features = int(grid), int(pdn_size), local_features

    @torch.no_grad()
    def pdn_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen local descriptor's features (the PDN's 384 channels, or a backbone's stages concatenated),
        each stage average-pooled to the shared grid: B×C×grid×grid."""
        if self.pdn_size != images.shape[-1]:
            images = F.interpolate(images, size=(self.pdn_size, self.pdn_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        stages = self.run("pdn", images)
        return torch.cat([F.adaptive_avg_pool2d(s, self.grid) for s in stages], 1)

    def local_input(self, images: torch.Tensor, latent: torch.Tensor,
                    pdn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T, the adapter's log-volume)``; the log-volume only in training (it needs the batch's statistics)."""
        feats = self.pdn_features(images) if pdn is None else pdn
        adapter = self["adapter"]
        t, log_volume = adapter.forward_with_volume(feats) if adapter.training else (adapter(feats), None)
        if self.local_features != "pdn":
            z = self["latent_norm"](latent.detach())
            t = t + z if self.local_features == "sum" else torch.cat([t, z], 1)
        return t, log_volume

    def forward(self, images: torch.Tensor, pdn: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(reconstruction in [-1, 1] B×3×H×W, NLL per position B×grid×grid, log-volume per dimension or None
        outside training)`` of images in [0, 1]; ``pdn``: their pooled PDN features when already computed."""
        recon, latent = self.run("autoencoder", images)
        t, log_volume = self.local_input(images, latent, pdn)
        return recon, self["density"].nll(t), log_volume / t.shape[1] if log_volume is not None else None
