"""Map normalisers fitted on maps of normal images (kind ``normaliser``).

- :class:`QuantileNorm` (``quantile_norm``): EfficientAD / VMPFD-AD normalisation ``(m - q_low) / (q_high - q_low)``
  with the quantiles fitted on maps of normal validation images.
- :class:`PositionNorm` (``position_norm``): ``m − μ(x, y)`` or ``(m − μ(x, y)) / σ(x, y)`` with the per-position
  mean and spread of maps of normal validation images: a place where every normal image scores high (a border the
  model never reconstructs well) stops deciding the image score.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssmad.core import (
    CheckpointError,
    DataError,
    configclass,
    field,
    in_range,
    positive,
)

from .maps import NotFittedError, _maps_tensor, _number_array, _restore_shape
from .smooth import Gaussian, GaussianConfig


@configclass
class QuantileNormConfig:
    q_low: float = field(default=0.9, validator=in_range(0.0, 1.0))
    q_high: float = field(default=0.995, validator=in_range(0.0, 1.0))
    max_samples: int = field(default=10_000_000, validator=positive)
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.q_low < self.q_high:
            raise ValueError(f"parameter 'q_low' ({self.q_low}) must be smaller than 'q_high' ({self.q_high})")


def _flat_values(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        return x.cpu().numpy().reshape(-1)
    return _number_array(x, what).reshape(-1)


class QuantileNorm:
    """``(m - q_low_value) / (q_high_value - q_low_value)`` with quantiles of normal validation maps.

    ``fit(maps)`` takes one array/tensor or an iterable of batches; when they hold more than ``max_samples``
    values, an equal fraction of every batch is drawn (with a generator seeded by ``seed``). If both quantiles
    are equal (constant maps) the maps are only shifted (scale 1) and a warning says so.
    """

    def __init__(self, cfg: QuantileNormConfig | None = None) -> None:
        self.cfg = cfg or QuantileNormConfig()
        self.q_low_value: float | None = None
        self.q_high_value: float | None = None

    @property
    def fitted(self) -> bool:
        return self.q_low_value is not None and self.q_high_value is not None

    @property
    def scale(self) -> float:
        self._require_fitted()
        span = self.q_high_value - self.q_low_value  # type: ignore[operator]
        return span if span > 0 else 1.0

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("quantile_norm: not fitted; call fit(maps of normal validation images) "
                                 "or load_state_dict() from a checkpoint first")

    def fit(self, maps: Any) -> QuantileNorm:
        if isinstance(maps, torch.Tensor | np.ndarray):
            batches = [maps]
        elif isinstance(maps, Iterable):
            batches = list(maps)
        else:
            raise DataError(f"quantile_norm.fit: expected maps or an iterable of map batches, got {type(maps)}")
        arrays = [_flat_values(b, f"quantile_norm.fit batch {i}") for i, b in enumerate(batches)]
        total = sum(a.size for a in arrays)
        if total == 0:
            raise DataError("quantile_norm.fit: no map values given")
        if total > self.cfg.max_samples:
            rng = np.random.default_rng(self.cfg.seed)
            rate = self.cfg.max_samples / total
            arrays = [a[rng.integers(0, a.size, size=max(1, round(rate * a.size)))] for a in arrays if a.size]
        sample = np.concatenate([a.astype(np.float64, copy=False) for a in arrays])
        if not np.isfinite(sample).all():
            raise DataError("quantile_norm.fit: the maps contain NaN or infinite values")
        lo, hi = np.quantile(sample, [self.cfg.q_low, self.cfg.q_high])
        self._set(float(lo), float(hi))
        return self

    def _set(self, lo: float, hi: float) -> None:
        self.q_low_value, self.q_high_value = lo, hi
        if hi == lo:
            warnings.warn(f"quantile_norm: q_high value equals q_low value ({lo:g}), the maps look constant; "
                          "normalised maps are only shifted (scale 1)", RuntimeWarning, stacklevel=3)

    def __call__(self, maps: Any) -> Any:
        self._require_fitted()
        lo, scale = self.q_low_value, self.scale
        if isinstance(maps, torch.Tensor):
            t = maps if maps.is_floating_point() else maps.float()
            return (t - lo) / scale
        arr = np.asarray(maps)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        return ((arr - lo) / scale).astype(arr.dtype, copy=False)

    def state_dict(self) -> dict[str, float]:
        self._require_fitted()
        return {"q_low_value": float(self.q_low_value), "q_high_value": float(self.q_high_value)}  # type: ignore[arg-type]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = []
        for key in ("q_low_value", "q_high_value"):
            if key not in state:
                raise CheckpointError(f"quantile_norm state: missing key {key!r} (found {sorted(state)})")
            try:
                v = float(state[key])
            except (TypeError, ValueError):
                raise CheckpointError(f"quantile_norm state: {key!r} must be a number, got {state[key]!r}") from None
            if not math.isfinite(v):
                raise CheckpointError(f"quantile_norm state: {key!r} must be finite, got {v}")
            values.append(v)
        if values[1] < values[0]:
            raise CheckpointError(f"quantile_norm state: q_high_value {values[1]} < q_low_value {values[0]}")
        self._set(values[0], values[1])

    def __repr__(self) -> str:
        fitted = f", q_low_value={self.q_low_value:g}, q_high_value={self.q_high_value:g}" if self.fitted else ""
        return f"QuantileNorm(q_low={self.cfg.q_low}, q_high={self.cfg.q_high}{fitted})"


# ---- position_norm ---------------------------------------------------------------------------------------

@configclass
class PositionNormConfig:
    mode: Literal["subtract", "zscore"] = "subtract"
    sigma: float = field(default=1.0, validator=in_range(0.0, 1000.0))
    eps: float = field(default=1e-6, validator=positive)


class PositionNorm:
    """Per-position reference of normal maps.

    ``fit(maps)`` (N×H×W or N×1×H×W of normal validation images, numpy or torch) keeps the per-pixel mean μ and,
    for ``mode="zscore"``, the standard deviation σ, each smoothed by a Gaussian of ``sigma`` pixels (0: none; few
    images give noisy per-pixel statistics). ``__call__`` returns ``m − μ`` (``subtract``) or
    ``(m − μ) / (σ + eps)`` (``zscore``); maps of another size than the fitted ones get the statistics resized
    bilinearly. The result keeps what is unusual *at that place*, so the image score (the map's maximum) no longer
    follows what every normal image shows.
    """

    def __init__(self, cfg: PositionNormConfig | None = None) -> None:
        self.cfg = cfg or PositionNormConfig()
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None and (self.cfg.mode == "subtract" or self.std is not None)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("position_norm: not fitted; call fit(maps of normal validation images) "
                                 "or load_state_dict() from a checkpoint first")

    def _smooth(self, stat: torch.Tensor) -> torch.Tensor:
        if self.cfg.sigma == 0:
            return stat
        return Gaussian(GaussianConfig(sigma=self.cfg.sigma))(stat[None, None])[0, 0]

    def fit(self, maps: Any) -> PositionNorm:
        t, _ = _maps_tensor(maps, "position_norm.fit")
        t = t[:, 0].double().cpu()
        need = 2 if self.cfg.mode == "zscore" else 1
        if t.shape[0] < need:
            raise DataError(f"position_norm.fit: mode {self.cfg.mode!r} needs at least {need} normal maps, "
                            f"got {t.shape[0]}")
        if not torch.isfinite(t).all():
            raise DataError("position_norm.fit: the maps contain NaN or infinite values")
        self.mean = self._smooth(t.mean(0)).float()
        self.std = self._smooth(t.std(0)).float() if self.cfg.mode == "zscore" else None
        return self

    def _stat(self, stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        s = stat.to(device=like.device, dtype=like.dtype)
        if tuple(s.shape) != tuple(like.shape[-2:]):
            s = F.interpolate(s[None, None], size=like.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        return s

    def __call__(self, maps: Any) -> Any:
        self._require_fitted()
        t, back = _maps_tensor(maps, "position_norm")
        out = t - self._stat(self.mean, t)  # type: ignore[arg-type]
        if self.cfg.mode == "zscore":
            out = out / (self._stat(self.std, t) + self.cfg.eps)  # type: ignore[arg-type]
        result = back(_restore_shape(out, maps))
        if isinstance(result, np.ndarray) and np.asarray(maps).dtype.kind == "f":
            result = result.astype(np.asarray(maps).dtype, copy=False)
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        state = {"mean": self.mean.clone()}  # type: ignore[union-attr]
        if self.std is not None:
            state["std"] = self.std.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = ["mean"] + (["std"] if self.cfg.mode == "zscore" else [])
        values = []
        for key in keys:
            if key not in state:
                raise CheckpointError(f"position_norm state: missing key {key!r} (found {sorted(state)})")
            v = torch.as_tensor(state[key], dtype=torch.float32)
            if v.ndim != 2 or not torch.isfinite(v).all():
                raise CheckpointError(f"position_norm state: {key!r} must be a finite H×W map, "
                                      f"got shape {tuple(v.shape)}")
            values.append(v)
        if len(values) == 2 and values[0].shape != values[1].shape:
            raise CheckpointError(f"position_norm state: 'mean' {tuple(values[0].shape)} and 'std' "
                                  f"{tuple(values[1].shape)} differ in shape")
        self.mean = values[0]
        self.std = values[1] if len(values) == 2 else None

    def __repr__(self) -> str:
        shape = f", fitted on {tuple(self.mean.shape)} maps" if self.mean is not None else ""
        return f"PositionNorm(mode={self.cfg.mode!r}, sigma={self.cfg.sigma}{shape})"
