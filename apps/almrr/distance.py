"""ALMRR's distance branch: the feature distance between F̂ and F made into a map, with everything fitted for it
after training, as one object (``fit_*`` / ``state_dict`` / ``__call__``).

- ``distance`` (``pipeline.distance``, kind ``distance``): ``mse`` (‖F̂ − F‖² / C), ``mahalanobis`` (the residual
  F̂ − F whitened by its mean and covariance over the held-out normal images) or ``position_mahalanobis`` (a mean and
  covariance per grid position, fitted on the training images' residuals, which it needs many of);
- ``norm`` (``pipeline.distance_norm``, a normaliser): e.g. ``position_norm``, minus the mean distance at each
  position over the held-out normal images. Without it, on Magnetic-tile-defect the largest distance of every test
  image lay within 16 px of the border, normal or not;
- ``smooth`` (``pipeline.distance_smooth``): e.g. a Gaussian at input resolution;
- ``scale`` (``pipeline.distance_scale``, ``quantile_norm``): maps the 0.9 / 0.999 quantiles of held-out normal
  pixels to 0 / 1, so the map can join the refined map (apps/almrr/fusion.py).

Before its fits (an epoch checkpoint, or a run that held out no images) each stage that needs one is skipped with
one :class:`~apps.common.method.UnfittedWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ssmad.core import ConfigError
from ssmad.scoring import MeanSquared

from ..common.config import build_role, component
from ..common.method import UnfittedWarning
from .torch_model import squared_distance


class DistanceBranch:
    """Built from a configuration's ``distance``, ``distance_norm``, ``distance_smooth`` and ``distance_scale``
    roles (each may be disabled; a disabled distance is the mean squared one) for ``channels`` feature channels on a
    grid of ``positions`` positions. A ConfigError when a distance's fit would not fit in memory."""

    def __init__(self, config: dict[str, Any], channels: int, positions: int) -> None:
        self.metric = build_role(config, "distance") or MeanSquared()
        self.metric_name = (component(config, "distance") or {}).get("name", "mse")
        if hasattr(self.metric, "check_size"):   # a fit too large for memory fails now, not after training
            try:
                self.metric.check_size(channels, positions)
            except ConfigError as exc:
                raise ConfigError(f"pipeline.distance: {exc}") from None
        self.norm = build_role(config, "distance_norm")
        self.smooth = build_role(config, "distance_smooth")
        self.scale = build_role(config, "distance_scale")
        self._warned: set[str] = set()

    # -- what it is ---------------------------------------------------------------------------------------------
    @property
    def fits_metric(self) -> bool:
        """Whether the distance itself is fitted (mahalanobis, position_mahalanobis)."""
        return bool(self.metric.needs_fit)

    @property
    def wants_many_images(self) -> bool:
        """Whether the distance is fitted on the training images rather than the held-out ones."""
        return self.fits_metric and bool(getattr(self.metric, "wants_many_images", False))

    @property
    def scale_fitted(self) -> bool:
        return self.scale is not None and self.scale.fitted

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UnfittedWarning, stacklevel=4)

    # -- maps -----------------------------------------------------------------------------------------------------
    def raw(self, recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The distance on the feature grid, B×1×S×S, before any normalisation (the mean squared distance while a
        fitted distance is not fitted yet)."""
        if self.metric.fitted:
            return self.metric(recon - feats)
        self._warn_once("metric", f"pipeline.distance ({self.metric!r}): not fitted (a checkpoint of a training "
                                  f"that did not finish, or no held-out normal images); the distance map is the "
                                  f"mean squared distance")
        return squared_distance(recon, feats)

    def map(self, raw: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """:meth:`raw` → the reported map B×1×H×W: ``norm``, resized (bilinear) to ``size``, ``smooth``."""
        if self.norm is not None:
            if self.norm.fitted:
                raw = self.norm(raw)
            else:
                self._warn_once("norm", "pipeline.distance_norm: not fitted (a checkpoint of a training that did "
                                        "not finish, or no held-out normal images); the distance map is reported raw")
        out = F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)
        return self.smooth(out) if self.smooth is not None else out

    def __call__(self, recon: torch.Tensor, feats: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The reported distance map of F̂ and F at ``size``."""
        return self.map(self.raw(recon, feats), size)

    def scaled(self, maps: torch.Tensor) -> torch.Tensor:
        """Reported maps through ``scale`` (fitted: the caller checks :attr:`scale_fitted`)."""
        return self.scale(maps)

    # -- fits -----------------------------------------------------------------------------------------------------
    def fit_metric(self, residuals: Iterable[torch.Tensor]) -> None:
        """Fit the distance on batches of F̂ − F of normal images (a no-op for a distance without a fit)."""
        if self.fits_metric:
            self.metric.fit(residuals)

    def fit_maps(self, raw: torch.Tensor, size: tuple[int, int] | torch.Size, with_scale: bool) -> bool:
        """Fit ``norm`` on the raw distances of normal images (N×1×S×S, after :meth:`fit_metric`), then, with
        ``with_scale``, ``scale`` on their reported maps at ``size``; whether ``scale`` was fitted."""
        if self.norm is not None:
            self.norm.fit(raw.cpu())
        if not with_scale or self.scale is None:
            return False
        self.scale.fit(torch.cat([self.map(raw[i:i + 16], size).cpu() for i in range(0, len(raw), 16)]))
        return True

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What was fitted: ``distance_norm``, ``distance_scale`` and (a fitted distance) ``distance``."""
        state = {name: part.state_dict() for name, part in (("distance_norm", self.norm),
                                                             ("distance_scale", self.scale))
                 if part is not None and part.fitted}
        if self.fits_metric and self.metric.fitted:
            state["distance"] = self.metric.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state_dict`'s fits (those present); whether the distance itself was among them."""
        for name, part in (("distance_norm", self.norm), ("distance_scale", self.scale)):
            if part is not None and name in state:
                part.load_state_dict(state[name])
        if self.fits_metric and "distance" in state:
            self.metric.load_state_dict(state["distance"])
            return True
        return False
