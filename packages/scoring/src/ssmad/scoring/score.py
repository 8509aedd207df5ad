"""Image scores from maps (kind ``score``).

- :class:`BoxMax` (``box_max``): mean filter of ``size``×``size`` ('same' output, windows clipped at the border) then
  the maximum per image: the image score of ALMRR's public code.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from ssmad.core import (
    configclass,
    field,
    positive,
)

from .maps import _maps_tensor, _odd, _restore_shape


@configclass
class BoxMaxConfig:
    size: int = field(default=9, validator=[positive, _odd])


class BoxMax:
    """Mean filter ``size``×``size`` then max per image: maps B×1×H×W -> scores (B,)."""

    def __init__(self, cfg: BoxMaxConfig | None = None) -> None:
        self.size = (cfg or BoxMaxConfig()).size

    def smooth(self, maps: Any) -> Any:
        """The box-filtered maps ('same' size; windows that leave the image average only the pixels inside)."""
        t, back = _maps_tensor(maps, "box_max")
        k = self.size
        out = F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)
        return back(_restore_shape(out, maps))

    def __call__(self, maps: Any) -> Any:
        t, back = _maps_tensor(maps, "box_max")
        k = self.size
        out = F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)
        return back(out.amax(dim=(1, 2, 3)))

    def __repr__(self) -> str:
        return f"BoxMax(size={self.size})"
