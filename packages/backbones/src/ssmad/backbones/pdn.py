"""EfficientAD's patch description network (PDN), small and medium, and its weight files.

Architecture (Batzner et al., "EfficientAD", WACV 2024; ``p`` = 1 with ``padding=True``, else 0):

- PDN-S: conv 3→128 k4 p3p, ReLU, avgpool 2 s2 p(p), conv 128→256 k4 p3p, ReLU, avgpool 2 s2 p(p),
  conv 256→256 k3 p(p), ReLU, conv 256→384 k4.
- PDN-M: conv 3→256 k4 p3p, ReLU, avgpool, conv 256→512 k4 p3p, ReLU, avgpool, conv 512→512 k1, ReLU,
  conv 512→512 k3 p(p), ReLU, conv 512→384 k4, ReLU, conv 384→384 k1.

The paper's table lists the padded variant (paddings 3, 3, 1, 0: 256×256 → 384×64×64, as used to distil the
teacher); EfficientAD's training and inference run it unpadded (256×256 → 384×56×56, receptive field 33×33,
output cell ``i`` sees input pixels ``4i … 4i+32``). Both have the same weights; ``padding=False`` is the default.
The layers are registered under the indices of EfficientAD's ``nn.Sequential`` (convolutions ``0, 3, 6, 8`` for
PDN-S and ``0, 3, 6, 8, 10, 12`` for PDN-M), so an EfficientAD teacher state dict (``0.weight``, ``0.bias``,
``3.weight``…) loads as it is.

Weight files (:func:`read_pdn_file`): an EfficientAD-style plain state dict of the Sequential, this module's own
``state_dict()``, or the checkpoint written by ``python -m ssmad.backbones distill`` (``format = "ssmad-pdn"``),
which also carries

- ``target_mean`` / ``target_std`` (384): the per-channel statistics that standardised the distillation targets —
  the PDN's outputs approximate ``(projected_teacher_features - target_mean) / target_std``;
- ``output_mean`` / ``output_std`` (384): the channel statistics of the finished PDN's own outputs over the
  distillation images, i.e. EfficientAD's teacher normalisation (``PDN.normalize_output``). Methods that fit
  them on their own training images can replace them with ``PDN.set_output_stats``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from ssmad.core import DataError

from .base import ImageNetNormalize, check_image_batch
from .weights import read_state_dict

PDN_FORMAT = "ssmad-pdn"
PDN_OUT_CHANNELS = 384
PDN_STRIDE = 4
PDN_CONV_INDICES = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}
_STATS = ("target_mean", "target_std", "output_mean", "output_std")


def pdn_layers(size: Literal["small", "medium"], padding: bool = False,
               out_channels: int = PDN_OUT_CHANNELS) -> list[nn.Module]:
    """The PDN as a list of layers, at the indices of EfficientAD's ``nn.Sequential``."""
    p = 1 if padding else 0
    if size == "small":
        return [
            nn.Conv2d(3, 128, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(128, 256, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(256, 256, 3, padding=p), nn.ReLU(),
            nn.Conv2d(256, out_channels, 4),
        ]
    if size == "medium":
        return [
            nn.Conv2d(3, 256, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(256, 512, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(512, 512, 1), nn.ReLU(),
            nn.Conv2d(512, 512, 3, padding=p), nn.ReLU(),
            nn.Conv2d(512, out_channels, 4), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1),
        ]
    raise ValueError(f"PDN size must be 'small' or 'medium', got {size!r}")


def pdn_output_size(n: int, padding: bool = False) -> int:
    """Output side length of PDN-S and PDN-M (identical) for an input side ``n`` (256 → 56, padded 64)."""
    p = 1 if padding else 0
    n = n + 6 * p - 3
    n = (n + 2 * p - 2) // 2 + 1
    n = n + 6 * p - 3
    n = (n + 2 * p - 2) // 2 + 1
    return n + 2 * p - 2 - 3


@attrs.frozen
class PDNWeights:
    """The content of a PDN weight file."""

    size: str  # "small" or "medium" (from the keys, or recorded in our format)
    state_dict: dict[str, Tensor]  # convolution weights only, EfficientAD keys ("0.weight", ...)
    stats: dict[str, Tensor]  # any of target_mean, target_std, output_mean, output_std
    meta: dict[str, Any]


def _guess_size(keys, source: str) -> str:
    indices = sorted({int(k.split(".", 1)[0]) for k in keys})
    for size, conv in PDN_CONV_INDICES.items():
        if tuple(indices) == conv:
            return size
    raise DataError(f"{source}: not a PDN state dict (layer indices {indices}; PDN-S has "
                    f"{list(PDN_CONV_INDICES['small'])}, PDN-M {list(PDN_CONV_INDICES['medium'])})")


def read_pdn_file(path: str | os.PathLike) -> PDNWeights:
    """Read a PDN weight file: EfficientAD teacher state dict, a ``PDN.state_dict()``, or our distilled format."""
    source = f"PDN weights file {path}"
    obj = read_state_dict(path, "PDN weights file")
    meta: dict[str, Any] = {}
    if obj.get("format") == PDN_FORMAT:
        sd = obj.get("state_dict")
        if not isinstance(sd, Mapping):
            raise DataError(f"{source}: {PDN_FORMAT} checkpoint without a 'state_dict'")
        meta = dict(obj.get("meta") or {})
        stats = {k: obj[k] for k in _STATS if isinstance(obj.get(k), Tensor)}
        recorded = obj.get("pdn")
    else:
        sd, stats, recorded = obj, {}, None
    tensors = {}
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k in _STATS and isinstance(value, Tensor):
            stats.setdefault(k, value)
        elif isinstance(value, Tensor) and k.split(".", 1)[0].isdigit():
            tensors[k] = value
        else:
            raise DataError(f"{source}: unexpected key {key!r} for a PDN state dict (expected '0.weight', "
                            f"'0.bias', '3.weight', ...)")
    if not tensors:
        raise DataError(f"{source}: holds no PDN tensors")
    size = _guess_size(tensors, source)
    if recorded is not None and recorded != size:
        raise DataError(f"{source}: recorded as pdn_{recorded} but its tensors are those of pdn_{size}")
    return PDNWeights(size=size, state_dict=tensors, stats=stats, meta=meta)


class PDN(nn.Module):
    """EfficientAD's patch description network: image B×3×H×W in [0, 1] → ``[B×384×h×w]`` (stride 4).

    ``normalize``: apply the ImageNet mean/std inside (EfficientAD feeds normalised images).
    ``frozen``: eval mode always and no gradients (a teacher); otherwise an ordinary trainable module.
    """

    def __init__(self, size: Literal["small", "medium"] = "small", *, padding: bool = False, normalize: bool = True,
                 frozen: bool = True, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.size = size
        self.padding = padding
        self.frozen = frozen
        self.layers = ("pdn",)
        self.channels = [PDN_OUT_CHANNELS]
        self.strides = [PDN_STRIDE]
        self.meta: dict[str, Any] = {}
        self.min_input_size = next(n for n in range(1, 100) if pdn_output_size(n, padding) >= 1)
        self._names = []
        for i, layer in enumerate(pdn_layers(size, padding)):
            self.add_module(str(i), layer)
            self._names.append(str(i))
        self.input_norm = ImageNetNormalize() if normalize else None
        for name in _STATS:
            init = torch.zeros if name.endswith("mean") else torch.ones
            self.register_buffer(name, init(PDN_OUT_CHANNELS))
        if weights is not None:
            self.load_weights(weights)
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    # -- weights -------------------------------------------------------------------------------------------
    def load_weights(self, path: str | os.PathLike) -> PDNWeights:
        """Load a PDN weight file (see :func:`read_pdn_file`) with shape checks; returns what was read."""
        w = read_pdn_file(path)
        if w.size != self.size:
            raise DataError(f"PDN weights file {path}: holds a pdn_{w.size}, but pdn_{self.size} was requested")
        own = self.state_dict()
        for key in own:
            if key in _STATS:
                continue
            if key not in w.state_dict:
                raise DataError(f"PDN weights file {path}: missing {key}")
            got, want = tuple(w.state_dict[key].shape), tuple(own[key].shape)
            if got != want:
                hint = (" (an EfficientAD student has 768 output channels; a teacher has 384)"
                        if key.endswith("weight") and got[:1] != want[:1] else "")
                raise DataError(f"PDN weights file {path}: {key} has shape {got}, expected {want}{hint}")
        with torch.no_grad():
            for key, value in w.state_dict.items():
                own[key].copy_(value)
            for key, value in w.stats.items():
                if tuple(value.shape) != (PDN_OUT_CHANNELS,):
                    raise DataError(f"PDN weights file {path}: {key} has shape {tuple(value.shape)}, "
                                    f"expected ({PDN_OUT_CHANNELS},)")
                getattr(self, key).copy_(value)
        self.meta = dict(w.meta)
        return w

    @property
    def has_output_stats(self) -> bool:
        """Whether ``output_mean``/``output_std`` hold real statistics (not the identity 0/1)."""
        return bool((self.output_mean != 0).any() or (self.output_std != 1).any())

    def set_output_stats(self, mean: Tensor, std: Tensor) -> None:
        with torch.no_grad():
            self.output_mean.copy_(mean.reshape(-1))
            self.output_std.copy_(std.reshape(-1))

    def normalize_output(self, y: Tensor) -> Tensor:
        """EfficientAD's teacher normalisation ``(y - output_mean) / output_std`` per channel."""
        return (y - self.output_mean.view(1, -1, 1, 1)) / self.output_std.view(1, -1, 1, 1)

    # -- module ------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PDN:
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, f"backbone 'pdn_{self.size}'")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"backbone 'pdn_{self.size}': input {tuple(x.shape[-2:])} is smaller than its "
                             f"{self.min_input_size}×{self.min_input_size} minimum (padding={self.padding})")
        if self.input_norm is not None:
            x = self.input_norm(x)
        for name in self._names:
            x = getattr(self, name)(x)
        return [x]

    def extra_repr(self) -> str:
        return f"size={self.size!r}, padding={self.padding}, frozen={self.frozen}"


def save_pdn_weights(pdn: PDN, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``pdn`` in our format (atomically): loadable by ``build("backbone", "pdn_small", weights=path)``."""
    from ssmad.core.files import atomic_write

    obj = pdn_checkpoint(pdn, meta)
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def pdn_checkpoint(pdn: PDN, meta: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    sd = {k: v.detach().cpu().clone() for k, v in pdn.state_dict().items() if k not in _STATS}
    obj: dict[str, Any] = {"format": PDN_FORMAT, "format_version": 1, "pdn": pdn.size, "state_dict": sd,
                           "meta": dict(meta or {})}
    for name in _STATS:
        obj[name] = getattr(pdn, name).detach().cpu().clone()
    obj.update(extra)
    return obj
