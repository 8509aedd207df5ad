"""Map smoothing (kind ``smooth``).

- :class:`Gaussian` (``gaussian``): separable Gaussian smoothing with the same kernel and border handling as
  ``scipy.ndimage.gaussian_filter`` (mode 'reflect', radius ``int(truncate * sigma + 0.5)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssmad.core import (
    configclass,
    field,
    positive,
)

from .maps import _maps_tensor, _restore_shape


@configclass
class GaussianConfig:
    sigma: float = field(default=4.0, validator=positive)
    truncate: float = field(default=4.0, validator=positive)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D kernel ``scipy.ndimage.gaussian_filter`` uses (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` on both sides, mirrored about the edges
    (``d c b a | a b c d | d c b a``, scipy's 'reflect'); works for any radius."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


class Gaussian:
    """Separable Gaussian smoothing of maps B×1×H×W (same size out), as ``scipy.ndimage.gaussian_filter``."""

    def __init__(self, cfg: GaussianConfig | None = None) -> None:
        cfg = cfg or GaussianConfig()
        self.sigma = cfg.sigma
        self.truncate = cfg.truncate
        self._kernel = torch.from_numpy(gaussian_kernel1d(cfg.sigma, cfg.truncate))

    @property
    def radius(self) -> int:
        return (self._kernel.numel() - 1) // 2

    def __call__(self, maps: Any) -> Any:
        t, back = _maps_tensor(maps, "gaussian")
        r = self.radius
        if r == 0:
            return back(_restore_shape(t.clone(), maps))
        k = self._kernel.to(device=t.device, dtype=t.dtype)
        h, w = t.shape[-2:]
        x = t.index_select(2, _reflect_index(h, r, t.device))
        x = F.conv2d(x, k.view(1, 1, -1, 1))
        x = x.index_select(3, _reflect_index(w, r, t.device))
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        return back(_restore_shape(x, maps))

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma}, truncate={self.truncate})"
