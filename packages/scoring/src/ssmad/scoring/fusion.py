"""Map fusion (kind ``fusion``).

- :class:`WeightedFusion` (``weighted``): the weighted sum of several maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ssmad.core import (
    ConfigError,
    DataError,
    configclass,
    field,
    non_empty,
)

from .maps import _finite_values


@configclass
class WeightedFusionConfig:
    weights: tuple[float, ...] = field(default=(0.5, 0.5), validator=[non_empty, _finite_values])


class WeightedFusion:
    """``fusion([map_a, map_b, ...]) = sum_i weights[i] * map_i`` (maps of one shape, numpy or torch)."""

    def __init__(self, cfg: WeightedFusionConfig | None = None) -> None:
        self.weights = (cfg or WeightedFusionConfig()).weights

    def __call__(self, maps: Sequence[Any]) -> Any:
        if isinstance(maps, torch.Tensor | np.ndarray) or not isinstance(maps, Sequence):
            raise DataError("fusion 'weighted': expected a list of maps, one per weight")
        if len(maps) != len(self.weights):
            raise ConfigError(f"fusion 'weighted': got {len(maps)} maps but {len(self.weights)} weights "
                              f"(parameter 'weights' = {list(self.weights)})")
        # (not while a graph is traced for export: its sizes are symbols, which a check would fix to one value)
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        shapes = set() if tracing else {tuple(m.shape) if hasattr(m, "shape") else tuple(np.shape(m)) for m in maps}
        if len(shapes) > 1:
            raise DataError(f"fusion 'weighted': maps must share one shape, got {sorted(shapes)}")
        if isinstance(maps[0], torch.Tensor):
            first = maps[0]
            dtype = first.dtype if first.is_floating_point() else torch.float32
            out = torch.zeros_like(first, dtype=dtype)
            for w, m in zip(self.weights, maps):
                out = out + w * torch.as_tensor(m, device=first.device).to(dtype)
            return out
        arrays = [np.asarray(m) for m in maps]
        dtype = np.result_type(*[a.dtype for a in arrays], np.float32)
        out_np = np.zeros(arrays[0].shape, dtype=dtype)
        for w, a in zip(self.weights, arrays):
            out_np += w * a
        return out_np

    def __repr__(self) -> str:
        return f"WeightedFusion(weights={self.weights})"
