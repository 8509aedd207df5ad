"""Shared pieces of every backbone: ImageNet normalisation, the frozen multi-stage extractor, ``concat_stages``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmad.core import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@attrs.frozen
class StageInfo:
    """One selectable output of a backbone: channels and stride (input pixels per map cell)."""

    channels: int
    stride: int


def check_layers(layers: Sequence[str], table: dict[str, StageInfo], where: str) -> tuple[str, ...]:
    """``layers`` as a tuple, or :class:`ConfigError` listing the allowed names (in network order);
    ``where`` names the value, e.g. ``"backbone 'resnet50' layers"``."""
    layers = tuple(layers)
    allowed = ", ".join(table)
    if not layers:
        raise ConfigError(f"{where} must name at least one of {allowed}")
    for name in layers:
        if name not in table:
            raise ConfigError(f"{where}: unknown layer {name!r}; allowed: {allowed}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{where} lists a layer twice: {list(layers)}")
    return layers


def layers_validator(table: dict[str, StageInfo]):
    """An attrs validator for a config's ``layers`` field: :func:`check_layers` on the field."""

    def check(inst, attribute, value):
        check_layers(value, table, f"parameter {attribute.name!r}")

    return check


def check_image_batch(x: Tensor, where: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{where}: expected a float image batch B×3×H×W in [0, 1], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{where}: expected a float image batch in [0, 1], got dtype {x.dtype}")


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` with the ImageNet statistics (buffers follow ``.to(device)``, not saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class FrozenBackbone(nn.Module):
    """A frozen multi-scale feature extractor built from an ordered list of stages.

    ``forward(x)`` takes a float batch B×3×H×W in [0, 1] (any H, W), normalises it with the ImageNet mean/std,
    runs the stages in order up to the deepest requested one (later stages are not even kept) and returns one
    map per entry of ``layers``, in the order of ``layers``. ``channels`` and ``strides`` describe those maps.
    The module is always in eval mode (``train()`` keeps it in eval) and no parameter requires grad.

    Subclasses pass ``stages`` (name → module, in execution order; some names, such as a stem, may be internal)
    and ``table`` (the selectable names → :class:`StageInfo`).
    """

    def __init__(self, name: str, stages: Sequence[tuple[str, nn.Module]], table: dict[str, StageInfo],
                 layers: Sequence[str]) -> None:
        super().__init__()
        self.name = name
        self.layers = check_layers(layers, table, f"backbone {name!r} layers")
        self.available = dict(table)
        self.channels = [table[n].channels for n in self.layers]
        self.strides = [table[n].stride for n in self.layers]
        order = [n for n, _ in stages]
        deepest = max(order.index(n) for n in self.layers)
        self.normalize = ImageNetNormalize()
        self.stages = nn.ModuleDict(OrderedDict(stages[: deepest + 1]))
        self._wanted = frozenset(self.layers)
        self.freeze()

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Frozen: stays in eval mode whatever ``mode`` is (batch-norm statistics never change)."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, f"backbone {self.name!r}")
        x = self.normalize(x)
        found: dict[str, Tensor] = {}
        for stage_name, stage in self.stages.items():
            x = stage(x)
            if stage_name in self._wanted:
                found[stage_name] = x
        return [found[n] for n in self.layers]

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, channels={self.channels}, strides={self.strides}"


def concat_stages(maps: Sequence[Tensor], size: int | tuple[int, int]) -> Tensor:
    """Resize every map to ``size`` (bilinear, ``align_corners=False``) and concatenate them on channels.

    ``concat_stages(resnet50_layer1_to_3_maps, 64)`` gives B×1792×64×64 (ALMRR's feature tensor).
    Maps already at ``size`` are used as they are.
    """
    if len(maps) == 0:
        raise ValueError("concat_stages: no maps given")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"concat_stages: size must be a positive int or (height, width), got {size!r}")
    batch = maps[0].shape[0]
    out = []
    for i, m in enumerate(maps):
        if m.ndim != 4 or m.shape[0] != batch:
            raise ValueError(f"concat_stages: map {i} has shape {tuple(m.shape)}; expected B×C×H×W with B={batch}")
        if tuple(m.shape[-2:]) != hw:
            m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, dim=1)
