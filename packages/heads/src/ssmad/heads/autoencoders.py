"""VMPFD-AD's image autoencoders (VMARN and its CNN ablation).

``forward(x: B×3×H×W in [0, 1]) -> (recon B×3×H×W in [-1, 1], latent B×d×h×w)``. The input is mapped to
``[-1, 1]`` (``x*2 - 1``) inside, before encoding, so the tanh output lives on the same scale: **compare
``recon`` against ``x*2 - 1``** (or map it back with ``(recon + 1) / 2``) — :meth:`ImageAutoencoder.target`
returns that target. ``encode(x)`` gives the latent, ``decode(latent)`` the reconstruction.

- ``vim_ae``: :class:`ssmad.ssm.ViMEncoder` with patch 32 (a conv ``k = s = 32`` is the linear patch
  embedding) → 64 tokens for a 256×256 input, learned position embedding, 4 bidirectional Mamba blocks.
- ``cnn_ae``: a strided CNN (conv 4×4 stride 2 + BN + ReLU, ``log2(patch)`` times, then a 3×3 conv) to the same
  ``d×h×w`` latent.

Both decode with ``log2(patch)`` transposed convolutions 4×4 stride 2 (each doubling the map) and one last
3×3 stride-1 transposed convolution to 3 channels; BatchNorm + ReLU between, tanh last (six transposed
convolutions for patch 32: 8×8 → 256×256). ``upsample = "resize"`` decodes with a nearest ×2 resize and a 3×3
convolution with replicated borders at each step instead: a transposed convolution's border outputs sum fewer
input taps than its interior ones (at every one of the six steps), so even a latent that is the same everywhere
decodes to an image that differs at the border, and the reconstruction error of normal images piles up there;
a resize and a replicate-padded convolution map a constant latent to a constant image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssmad.core import ConfigError, configclass, field, in_range, non_empty, positive
from ssmad.ssm import ViMEncoder

from .layers import check_widths

UPSAMPLES = ("transposed", "resize")


def _one_of(value, allowed, name) -> None:
    if value not in allowed:
        raise ValueError(f"parameter {name!r} must be one of {', '.join(allowed)}, got {value!r}")


def _power_of_two(inst, attribute, value) -> None:
    if value < 2 or value & (value - 1):
        raise ValueError(f"parameter 'patch' must be a power of two >= 2, got {value}")


@configclass
class AutoencoderConfig:
    """Parameters of the ``cnn_ae`` image autoencoder (and the common part of ``vim_ae``)."""

    img_size: int = field(default=256, validator=positive)
    patch: int = field(default=32, validator=[positive, _power_of_two])
    d_model: int = field(default=192, validator=positive)
    decoder_widths: tuple[int, ...] = field(default=(256, 128, 64, 32, 16), validator=non_empty)
    upsample: str = field(default="transposed", validator=lambda inst, attr, v: _one_of(v, UPSAMPLES, attr.name))

    def __attrs_post_init__(self) -> None:
        if self.img_size % self.patch:
            raise ValueError(f"parameter 'img_size' ({self.img_size}) must be divisible by 'patch' ({self.patch})")
        n_up = self.patch.bit_length() - 1
        if len(self.decoder_widths) != n_up:
            raise ValueError(f"parameter 'decoder_widths' needs {n_up} entries (one per ×2 up-step for patch "
                             f"{self.patch}), got {list(self.decoder_widths)}")
        if any(w <= 0 for w in self.decoder_widths):
            raise ValueError(f"parameter 'decoder_widths' must hold positive integers, got {list(self.decoder_widths)}")


@configclass
class ViMAutoencoderConfig(AutoencoderConfig):
    """Parameters of the ``vim_ae`` image autoencoder (VMARN)."""

    depth: int = field(default=4, validator=positive)
    drop_path: float = field(default=0.0, validator=in_range(0.0, 0.99))
    d_state: int = field(default=16, validator=positive)
    scan: str = "auto"


def image_decoder(d_model: int, widths: Sequence[int], out_channels: int = 3,
                  upsample: str = "transposed") -> nn.Sequential:
    """``len(widths)`` ×2 steps (``d_model → widths…``) with BN + ReLU, then a 3×3 layer to ``out_channels`` → tanh.
    ``upsample``: "transposed" (ConvT 4×4 s2 p1, last ConvT 3×3 s1 p1) or "resize" (nearest ×2 + conv 3×3 with
    replicated borders, last conv 3×3 replicated)."""
    widths = check_widths(widths, "decoder_widths")
    _one_of(upsample, UPSAMPLES, "upsample")
    layers: list[nn.Module] = []
    c = d_model
    for w in widths:
        if upsample == "transposed":
            layers.append(nn.ConvTranspose2d(c, w, 4, stride=2, padding=1, bias=False))
        else:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, w, 3, padding=1, padding_mode="replicate", bias=False)]
        layers += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c = w
    last = (nn.ConvTranspose2d(c, out_channels, 3, stride=1, padding=1) if upsample == "transposed"
            else nn.Conv2d(c, out_channels, 3, padding=1, padding_mode="replicate"))
    layers += [last, nn.Tanh()]
    return nn.Sequential(*layers)


def cnn_encoder(d_model: int, widths: Sequence[int], in_channels: int = 3) -> nn.Sequential:
    """``len(widths)`` conv 4×4 s2 p1 (``in_channels → widths…``) with BN + ReLU, then conv 3×3 → ``d_model``."""
    widths = check_widths(widths, "encoder widths")
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c = w
    layers.append(nn.Conv2d(c, d_model, 3, padding=1))
    return nn.Sequential(*layers)


class ImageAutoencoder(nn.Module):
    """Encoder (image in ``[-1, 1]`` → ``d×h×w`` latent) + transposed-conv decoder (latent → tanh image)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, img_size: int, d_model: int, patch: int) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.img_size, self.d_model, self.patch = img_size, d_model, patch

    @staticmethod
    def target(x: torch.Tensor) -> torch.Tensor:
        """The reconstruction target for an input in ``[0, 1]``: ``x*2 - 1``."""
        return x * 2.0 - 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent ``B×d_model×(H/patch)×(W/patch)`` of an image batch in ``[0, 1]``.

        Built for ``img_size``; other sides that are multiples of ``patch`` work too (the ViM position embedding
        is resized), and the reconstruction then has the input's size."""
        p = self.patch
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % p or x.shape[-1] % p:
            raise ConfigError(f"autoencoder: expected images B×3×H×W with H and W multiples of {p} (built for "
                              f"{self.img_size}×{self.img_size}), got {tuple(x.shape)}")
        return self.encoder(self.target(x))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstruction in ``[-1, 1]`` from a latent."""
        return self.decoder(latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encode(x)
        return self.decode(latent), latent


def build_vim_ae(cfg: ViMAutoencoderConfig) -> ImageAutoencoder:
    """VMARN: ViM image autoencoder (32×32 patches, 4 ViM blocks, 6 transposed convs); recon in [-1, 1]."""
    encoder = ViMEncoder(3, cfg.img_size, cfg.patch, cfg.d_model, cfg.depth, drop_path=cfg.drop_path,
                         d_state=cfg.d_state, scan=cfg.scan)
    return ImageAutoencoder(encoder, image_decoder(cfg.d_model, cfg.decoder_widths, upsample=cfg.upsample),
                            cfg.img_size, cfg.d_model, cfg.patch)


def build_cnn_ae(cfg: AutoencoderConfig) -> ImageAutoencoder:
    """Image autoencoder ablation: strided-CNN encoder to the same latent grid, same decoder as vim_ae."""
    encoder = cnn_encoder(cfg.d_model, tuple(reversed(cfg.decoder_widths)))
    return ImageAutoencoder(encoder, image_decoder(cfg.d_model, cfg.decoder_widths, upsample=cfg.upsample),
                            cfg.img_size, cfg.d_model, cfg.patch)
