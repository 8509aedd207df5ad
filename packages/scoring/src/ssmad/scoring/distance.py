"""Feature distances (kind ``distance``): how far a reconstruction F̂ lies from the features F at each position.

Every component takes the residual ``R = F̂ − F`` as a tensor B×C×H×W (any float dtype, any device) and returns a
float32 map B×1×H×W on the same device.

- :class:`MeanSquared` (``mse``): the mean over channels of R², i.e. ‖F̂ − F‖² / C. Nothing to fit.
- :class:`Mahalanobis` (``mahalanobis``): (R − μ)ᵀ Σ⁻¹ (R − μ) / C, with μ and Σ the mean and covariance of the
  residual vectors of normal validation images (every position of every image pooled), Σ regularised by
  ``ridge`` · tr(Σ)/C on its diagonal. Channels differ in scale and are correlated (stages of a backbone are
  concatenated); the plain squared distance lets the largest and most redundant ones decide, this one weighs each
  direction by how much normal residuals vary along it. About 1 on normal residuals.
- :class:`PositionMahalanobis` (``position_mahalanobis``): the same with one mean and covariance per position of
  the feature grid (PaDiM's model, applied to the residual): where the images are aligned (one product, one tile
  shape) normal variation differs from place to place, an edge here, flat surface there. Each position's
  covariance is shrunk toward the positions' pooled one by ``shrinkage`` pseudo-images, so that a few images
  suffice; it still wants many (all the training images) where the pooled one needs a few. Memory: a C×C matrix per
  position (for 176 channels on a 64×64 grid, 0.5 GB in float32, 1.5 GB while fitting); ``channels`` keeps a fixed
  random subset of the channels (PaDiM's reduction) where that is too much, and ``max_gb`` refuses to start a fit
  that would need more than it.

Fitted components have ``fit(residuals)`` (one tensor or an iterable of batches, so that the residuals of many
images need not be held at once), ``fitted``, ``state_dict()`` / ``load_state_dict()``; ``needs_fit`` says whether
``fit`` does anything, ``wants_many_images`` whether it should see every normal image there is (the training images)
rather than a held-out few.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ssmad.core import CheckpointError, ConfigError, DataError, configclass, field, in_range

from .maps import NotFittedError


def _residual(r: Any, what: str) -> torch.Tensor:
    if not isinstance(r, torch.Tensor):
        raise DataError(f"{what}: expected the residual F̂ − F as a tensor B×C×H×W, got {type(r).__name__}")
    if r.ndim != 4:
        raise DataError(f"{what}: expected the residual F̂ − F as a tensor B×C×H×W, got shape {tuple(r.shape)}")
    return r.detach().float()


def _batches(residuals: Any, name: str) -> Iterable:
    """``fit``'s argument as an iterable of residual batches (one tensor is one batch)."""
    batches = [residuals] if isinstance(residuals, torch.Tensor) else residuals
    if not isinstance(batches, Iterable):
        raise DataError(f"distance {name!r}.fit: expected residuals or an iterable of residual batches, got "
                        f"{type(residuals).__name__}")
    return batches


def _require_fitted(component: Any, name: str) -> None:
    if not component.fitted:
        raise NotFittedError(f"distance {name!r}: not fitted; call fit(residuals of normal images) or "
                             f"load_state_dict() from a checkpoint first")


def _whiteners(cov: torch.Tensor, ridge: torch.Tensor | float, name: str) -> torch.Tensor:
    """L⁻¹ of each covariance (…×C×C, float64) plus ``ridge`` on its diagonal, Σ + ridge·I = L Lᵀ, so that
    ‖L⁻¹ x‖² = xᵀ (Σ + ridge·I)⁻¹ x. A DataError when one is not positive definite."""
    c = cov.shape[-1]
    eye = torch.eye(c, dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov + ridge * eye)
    if bool((info != 0).any()):
        raise DataError(f"distance {name!r}.fit: the residual covariance is singular (constant residuals, or the "
                        f"ridge too small); raise the component's 'ridge'")
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)


# ---- mse -------------------------------------------------------------------------------------------------

@configclass
class MeanSquaredConfig:
    pass


class MeanSquared:
    """‖R‖² / C per position (ALMRR's feature distance)."""

    needs_fit = False
    wants_many_images = False
    fitted = True

    def __init__(self, cfg: MeanSquaredConfig | None = None) -> None:
        self.cfg = cfg or MeanSquaredConfig()

    def fit(self, residuals: Any) -> MeanSquared:
        return self

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        return _residual(residual, "distance 'mse'").pow(2).mean(1, keepdim=True)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return "MeanSquared()"


# ---- mahalanobis -----------------------------------------------------------------------------------------

@configclass
class MahalanobisConfig:
    ridge: float = field(default=1e-3, validator=in_range(0.0, 1e6))


class Mahalanobis:
    """(R − μ)ᵀ Σ⁻¹ (R − μ) / C per position, μ and Σ fitted on residuals of normal images (see the module)."""

    needs_fit = True
    wants_many_images = False

    def __init__(self, cfg: MahalanobisConfig | None = None) -> None:
        self.cfg = cfg or MahalanobisConfig()
        self.mean: torch.Tensor | None = None        # (C,)
        self.whitener: torch.Tensor | None = None    # (C, C): L⁻¹ with Σ_ridge = L Lᵀ, so ‖L⁻¹ x‖² = xᵀ Σ⁻¹ x

    @property
    def fitted(self) -> bool:
        return self.mean is not None and self.whitener is not None

    def fit(self, residuals: Any) -> Mahalanobis:
        batches = _batches(residuals, "mahalanobis")
        n, total, outer = 0, None, None
        for i, batch in enumerate(batches):
            r = _residual(batch, f"distance 'mahalanobis'.fit batch {i}")
            x = r.transpose(0, 1).reshape(r.shape[1], -1).double()       # C × (B·H·W)
            if total is not None and x.shape[0] != total.shape[0]:
                raise DataError(f"distance 'mahalanobis'.fit batch {i}: {x.shape[0]} channels, the earlier batches "
                                f"had {total.shape[0]}")
            if not torch.isfinite(x).all():
                raise DataError(f"distance 'mahalanobis'.fit batch {i}: the residuals contain NaN or infinite values")
            if total is None:
                total, outer = x.sum(1), x @ x.T
            else:
                total, outer = total + x.sum(1), outer + x @ x.T
            n += x.shape[1]
        if total is None or n < 2:
            raise DataError(f"distance 'mahalanobis'.fit: needs at least 2 residual vectors (positions), got {n}")
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        ridge = self.cfg.ridge * cov.trace().clamp_min(0) / cov.shape[0]
        whitener = _whiteners(cov[None], ridge, "mahalanobis")[0]
        self.mean, self.whitener = mean.float().cpu(), whitener.float().cpu()
        return self

    def _require_fitted(self) -> None:
        _require_fitted(self, "mahalanobis")

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        r = _residual(residual, "distance 'mahalanobis'")
        c = self.mean.shape[0]  # type: ignore[union-attr]
        if r.shape[1] != c:
            raise DataError(f"distance 'mahalanobis': fitted on residuals of {c} channels, got {r.shape[1]}")
        mean = self.mean.to(r.device)  # type: ignore[union-attr]
        w = self.whitener.to(r.device)  # type: ignore[union-attr]
        z = F.conv2d(r - mean.view(1, c, 1, 1), w.view(c, c, 1, 1))
        return z.pow(2).mean(1, keepdim=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        return {"mean": self.mean.clone(), "whitener": self.whitener.clone()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("mean", "whitener"):
            if key not in state:
                raise CheckpointError(f"distance 'mahalanobis' state: missing key {key!r} (found {sorted(state)})")
        mean = torch.as_tensor(state["mean"], dtype=torch.float32)
        whitener = torch.as_tensor(state["whitener"], dtype=torch.float32)
        c = mean.shape[0] if mean.ndim == 1 else -1
        if c < 1 or tuple(whitener.shape) != (c, c):
            raise CheckpointError(f"distance 'mahalanobis' state: expected 'mean' (C,) and 'whitener' (C, C), got "
                                  f"{tuple(mean.shape)} and {tuple(whitener.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(whitener).all()):
            raise CheckpointError("distance 'mahalanobis' state: 'mean' and 'whitener' must be finite")
        self.mean, self.whitener = mean, whitener

    def __repr__(self) -> str:
        fitted = f", fitted on {self.mean.shape[0]} channels" if self.fitted else ""  # type: ignore[union-attr]
        return f"Mahalanobis(ridge={self.cfg.ridge:g}{fitted})"


# ---- position_mahalanobis --------------------------------------------------------------------------------

@configclass
class PositionMahalanobisConfig:
    ridge: float = field(default=1e-3, validator=in_range(0.0, 1e6))        # × tr(pooled Σ)/C on every diagonal
    shrinkage: float = field(default=10.0, validator=in_range(0.0, 1e9))    # pseudo-images of the pooled Σ
    channels: int = field(default=0, validator=in_range(0, 1 << 20))        # 0: all; else a fixed random subset
    max_gb: float = field(default=4.0, validator=in_range(0.0, 1e6))        # refuse a fit needing more memory


class PositionMahalanobis:
    """(R_p − μ_p)ᵀ Σ_p⁻¹ (R_p − μ_p) / C at each position p, with μ_p and Σ_p fitted per position on residuals of
    normal images, Σ_p = ((n−1) S_p + k Σ̄) / (n−1+k) + ridge·tr(Σ̄)/C·I from the sample covariance S_p of the n
    images, their mean Σ̄ over positions and k = ``shrinkage`` (see the module)."""

    needs_fit = True
    wants_many_images = True

    def __init__(self, cfg: PositionMahalanobisConfig | None = None) -> None:
        self.cfg = cfg or PositionMahalanobisConfig()
        self.keep: torch.Tensor | None = None        # (C,) the channels used, of ``in_channels``
        self.in_channels = 0
        self.mean: torch.Tensor | None = None        # (P, C)
        self.whitener: torch.Tensor | None = None    # (P, C, C), lower triangular
        self.grid: tuple[int, int] = (0, 0)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}   # the statistics moved to a device

    @property
    def fitted(self) -> bool:
        return self.mean is not None and self.whitener is not None

    def _select(self, r: torch.Tensor) -> torch.Tensor:
        return r if self.keep is None else r.index_select(1, self.keep.to(r.device))

    def check_size(self, channels: int, positions: int) -> float:
        """The memory in GB that a fit on residuals of ``channels`` channels at ``positions`` grid positions needs
        (after the ``channels`` subset); a ConfigError naming the keys to change when it is more than ``max_gb``.
        Callers check it before training: ``fit`` comes after."""
        c = min(channels, self.cfg.channels or channels)
        need = positions * c * c * (8 + 8 + 4) / 2 ** 30     # float64 sums and their temporaries, the float32 result
        if need > self.cfg.max_gb:
            fit = int((self.cfg.max_gb * 2 ** 30 / (positions * 20)) ** 0.5)
            raise ConfigError(f"distance 'position_mahalanobis': {c} channels at {positions} positions need about "
                              f"{need:.1f} GB to fit, more than max_gb = {self.cfg.max_gb:g}; keep fewer channels "
                              f"(the component's 'channels', e.g. {max(1, fit)}), or raise 'max_gb'")
        return need

    def _plan(self, channels: int, positions: int) -> None:
        """Check the size and choose the channels (a fixed random subset of ``channels``)."""
        self.check_size(channels, positions)
        self.in_channels = channels
        self.keep = None
        if self.cfg.channels and self.cfg.channels < channels:
            g = torch.Generator().manual_seed(0)
            self.keep = torch.randperm(channels, generator=g)[:self.cfg.channels].sort().values

    def fit(self, residuals: Any) -> PositionMahalanobis:
        name = "distance 'position_mahalanobis'.fit"
        batches = _batches(residuals, "position_mahalanobis")
        n, total, outer, shape = 0, None, None, None
        for i, batch in enumerate(batches):
            r = _residual(batch, f"{name} batch {i}")
            if shape is None:
                shape = tuple(r.shape[1:])
                self._plan(shape[0], shape[1] * shape[2])
            elif tuple(r.shape[1:]) != shape:
                raise DataError(f"{name} batch {i}: residuals of shape C×H×W = {tuple(r.shape[1:])}, the earlier "
                                f"batches had {shape}")
            if not torch.isfinite(r).all():
                raise DataError(f"{name} batch {i}: the residuals contain NaN or infinite values")
            x = self._select(r).flatten(2).double()                          # B × C × P
            if total is None:
                total = x.sum(0)
                outer = torch.einsum("bcp,bdp->pcd", x, x)
            else:
                total += x.sum(0)
                outer += torch.einsum("bcp,bdp->pcd", x, x)
            n += x.shape[0]
        if total is None or n < 2:
            raise DataError(f"{name}: needs the residuals of at least 2 images, got {n}")
        mean = (total / n).T.contiguous()                                    # P × C
        del total
        cov = outer.sub_(n * mean[:, :, None] * mean[:, None, :]).div_(n - 1)      # P × C × C, in place
        pooled = cov.mean(0)
        k = self.cfg.shrinkage
        if k > 0:
            cov.mul_((n - 1) / (n - 1 + k)).add_(pooled * (k / (n - 1 + k)))
        ridge = self.cfg.ridge * pooled.trace().clamp_min(0) / cov.shape[-1]
        whitener = torch.empty(cov.shape, dtype=torch.float32)
        for s in range(0, cov.shape[0], 256):                               # chunks bound the factorisation's memory
            whitener[s:s + 256] = _whiteners(cov[s:s + 256], ridge, "position_mahalanobis").float().cpu()
        self.mean, self.whitener, self.grid = mean.float().cpu(), whitener, (shape[1], shape[2])
        self._on = {}
        return self

    def _require_fitted(self) -> None:
        _require_fitted(self, "position_mahalanobis")

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        r = _residual(residual, "distance 'position_mahalanobis'")
        if r.shape[1] != self.in_channels or tuple(r.shape[2:]) != self.grid:
            raise DataError(f"distance 'position_mahalanobis': fitted on residuals of {self.in_channels} channels on "
                            f"a {self.grid[0]}×{self.grid[1]} grid, got {r.shape[1]} on {r.shape[2]}×{r.shape[3]}")
        if r.device not in self._on:          # moved once per device: the whiteners are large
            self._on[r.device] = (self.mean.to(r.device), self.whitener.to(r.device))  # type: ignore[union-attr]
        mean, whitener = self._on[r.device]
        x = self._select(r).flatten(2) - mean.T                              # B × C × P
        z = torch.einsum("pcd,bdp->bcp", whitener, x)
        return z.pow(2).mean(1).view(r.shape[0], 1, *self.grid)

    def state_dict(self) -> dict[str, Any]:
        """The whiteners as their lower triangles (half the size of the square matrices)."""
        self._require_fitted()
        c = self.mean.shape[1]  # type: ignore[union-attr]
        rows, cols = torch.tril_indices(c, c)
        return {"mean": self.mean.clone(), "whitener_tril": self.whitener[:, rows, cols].clone(),  # type: ignore
                "keep": torch.arange(self.in_channels) if self.keep is None else self.keep.clone(),
                "in_channels": self.in_channels, "grid": list(self.grid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        what = "distance 'position_mahalanobis' state"
        for key in ("mean", "whitener_tril", "keep", "in_channels", "grid"):
            if key not in state:
                raise CheckpointError(f"{what}: missing key {key!r} (found {sorted(state)})")
        mean = torch.as_tensor(state["mean"], dtype=torch.float32)
        tril = torch.as_tensor(state["whitener_tril"], dtype=torch.float32)
        keep = torch.as_tensor(state["keep"], dtype=torch.long)
        grid = tuple(int(v) for v in state["grid"])
        in_channels = int(state["in_channels"])
        p, c = (mean.shape if mean.ndim == 2 else (-1, -1))
        if (len(grid) != 2 or p != grid[0] * grid[1] or tuple(tril.shape) != (p, c * (c + 1) // 2)
                or tuple(keep.shape) != (c,) or not 0 < c <= in_channels
                or bool((keep < 0).any() or (keep >= in_channels).any())):
            raise CheckpointError(f"{what}: inconsistent shapes: mean {tuple(mean.shape)}, whitener_tril "
                                  f"{tuple(tril.shape)}, keep {tuple(keep.shape)}, in_channels {in_channels}, grid "
                                  f"{grid}")
        if not (torch.isfinite(mean).all() and torch.isfinite(tril).all()):
            raise CheckpointError(f"{what}: 'mean' and 'whitener_tril' must be finite")
        whitener = torch.zeros(p, c, c)
        rows, cols = torch.tril_indices(c, c)
        whitener[:, rows, cols] = tril
        self.mean, self.whitener, self.grid, self.in_channels = mean, whitener, (grid[0], grid[1]), in_channels
        self.keep = None if c == in_channels else keep
        self._on = {}

    def __repr__(self) -> str:
        cfg = self.cfg
        fitted = (f", fitted on {self.mean.shape[1]} of {self.in_channels} channels at {self.grid[0]}×{self.grid[1]}"  # type: ignore[union-attr]
                  if self.fitted else "")
        return (f"PositionMahalanobis(ridge={cfg.ridge:g}, shrinkage={cfg.shrinkage:g}, channels={cfg.channels}"
                f"{fitted})")
