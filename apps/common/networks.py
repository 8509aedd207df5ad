"""The networks of a method, by pipeline role, run in the method's precision: the base of each method's pure
``torch_model`` (anomalib's split: the model is an ``nn.Module`` with no training glue, no losses and no fitted
statistics; the method around it trains it and scores with it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssmad.core.device import autocast


def to_fp32(out: Any) -> Any:
    """Floating tensors (alone, or in a tuple or list) as fp32; anything else as it is."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple | list):
        return type(out)(to_fp32(o) for o in out)
    return out


class Networks(nn.ModuleDict):
    """``nn.ModuleDict`` of networks keyed by pipeline role (the checkpoint's ``modules.ROLE.*`` keys).

    ``precision``: "fp32", "bf16" or "fp16" (resolved, :func:`ssmad.core.device.resolve_precision`);
    ``device``: where they run. :meth:`run` calls one of them in that precision and returns its floating outputs
    in fp32, so what follows (losses, distances, statistics) computes in fp32 whatever the network ran in."""

    def __init__(self, modules: dict[str, nn.Module] | None = None, precision: str = "fp32",
                 device: torch.device | None = None) -> None:
        super().__init__(modules)
        self.precision = precision
        self.device = device if device is not None else torch.device("cpu")

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``self[name](*args, **kwargs)`` in :attr:`precision`, floating outputs in fp32."""
        if self.precision == "fp32":
            return self[name](*args, **kwargs)
        with autocast(self.device, self.precision):
            out = self[name](*args, **kwargs)
        return to_fp32(out)
