"""The networks of a method, by pipeline role, run in the method's precision: the base of each method's pure
``torch_model`` (anomalib's split: the model is an ``nn.Module`` with no training glue, no losses and no fitted
statistics; the method around it trains it and scores with it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssmad.core.device import autocast


def to_fp32(out: Any) -> Any:
    """Floating tensors (alone, or in a tuple or list) as fp32 in the default (contiguous) memory format; anything
    else as it is."""
    if isinstance(out, torch.Tensor):
        return out.float().contiguous() if out.is_floating_point() else out
    if isinstance(out, tuple | list):
        return type(out)(to_fp32(o) for o in out)
    return out


def _channels_last(x: Any) -> Any:
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


class Networks(nn.ModuleDict):
    """``nn.ModuleDict`` of networks keyed by pipeline role (the checkpoint's ``modules.ROLE.*`` keys).

    ``precision``: "fp32", "bf16" or "fp16" (resolved, :func:`ssmad.core.device.resolve_precision`);
    ``device``: where they run; ``channels_last``: whether their 4-D weights and the 4-D inputs :meth:`run` passes
    them are in the channels-last memory format (faster convolutions on CPUs, through oneDNN, and on GPUs; a
    module added later is converted too). :meth:`run` calls one of them in that precision and returns its floating
    outputs in fp32 and contiguous, so what follows (losses, distances, statistics) computes in fp32 and in the
    default layout whatever the network ran in."""

    def __init__(self, modules: dict[str, nn.Module] | None = None, precision: str = "fp32",
                 device: torch.device | None = None, channels_last: bool = False) -> None:
        self.channels_last = bool(channels_last)
        super().__init__(modules)
        self.precision = precision
        self.device = device if device is not None else torch.device("cpu")

    def __setitem__(self, key: str, module: nn.Module) -> None:   # (the constructor's modules come through here)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        super().__setitem__(key, module)

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``self[name](*args, **kwargs)`` in :attr:`precision` (and the memory format), floating outputs in fp32,
        contiguous."""
        if self.channels_last:
            args = tuple(_channels_last(a) for a in args)
            kwargs = {k: _channels_last(v) for k, v in kwargs.items()}
        if self.precision == "fp32":
            out = self[name](*args, **kwargs)
            return to_fp32(out) if self.channels_last else out
        with autocast(self.device, self.precision):
            out = self[name](*args, **kwargs)
        return to_fp32(out)
