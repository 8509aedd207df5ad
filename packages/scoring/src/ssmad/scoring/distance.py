"""Feature distances (kind ``distance``): how far a reconstruction F̂ lies from the features F at each position.

Every component takes the residual ``R = F̂ − F`` as a tensor B×C×H×W (any float dtype, any device) and returns a
float32 map B×1×H×W on the same device.

- :class:`MeanSquared` (``mse``): the mean over channels of R², i.e. ‖F̂ − F‖² / C. Nothing to fit.
- :class:`Mahalanobis` (``mahalanobis``): (R − μ)ᵀ Σ⁻¹ (R − μ) / C, with μ and Σ the mean and covariance of the
  residual vectors of normal validation images (every position of every image pooled), Σ regularised by
  ``ridge`` · tr(Σ)/C on its diagonal. Channels differ in scale and are correlated (stages of a backbone are
  concatenated); the plain squared distance lets the largest and most redundant ones decide, this one weighs each
  direction by how much normal residuals vary along it. About 1 on normal residuals.

Fitted components have ``fit(residuals)`` (one tensor or an iterable of batches, so that the residuals of many
images need not be held at once), ``fitted``, ``state_dict()`` / ``load_state_dict()``; ``needs_fit`` says whether
``fit`` does anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ssmad.core import CheckpointError, DataError, configclass, field, in_range

from .postprocess import NotFittedError


def _residual(r: Any, what: str) -> torch.Tensor:
    if not isinstance(r, torch.Tensor):
        raise DataError(f"{what}: expected the residual F̂ − F as a tensor B×C×H×W, got {type(r).__name__}")
    if r.ndim != 4:
        raise DataError(f"{what}: expected the residual F̂ − F as a tensor B×C×H×W, got shape {tuple(r.shape)}")
    return r.detach().float()


# ---- mse -------------------------------------------------------------------------------------------------

@configclass
class MeanSquaredConfig:
    pass


class MeanSquared:
    """‖R‖² / C per position (ALMRR's feature distance)."""

    needs_fit = False
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

    def __init__(self, cfg: MahalanobisConfig | None = None) -> None:
        self.cfg = cfg or MahalanobisConfig()
        self.mean: torch.Tensor | None = None        # (C,)
        self.whitener: torch.Tensor | None = None    # (C, C): L⁻¹ with Σ_ridge = L Lᵀ, so ‖L⁻¹ x‖² = xᵀ Σ⁻¹ x

    @property
    def fitted(self) -> bool:
        return self.mean is not None and self.whitener is not None

    def fit(self, residuals: Any) -> Mahalanobis:
        batches = [residuals] if isinstance(residuals, torch.Tensor) else residuals
        if not isinstance(batches, Iterable):
            raise DataError(f"distance 'mahalanobis'.fit: expected residuals or an iterable of residual batches, "
                            f"got {type(residuals).__name__}")
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
        c = cov.shape[0]
        cov = cov + (self.cfg.ridge * cov.trace().clamp_min(0) / c) * torch.eye(c, dtype=cov.dtype, device=cov.device)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise DataError(f"distance 'mahalanobis'.fit: the residual covariance is singular (constant residuals, or "
                            f"ridge = {self.cfg.ridge:g} too small); raise the component's 'ridge'")
        eye = torch.eye(c, dtype=cov.dtype, device=cov.device)
        whitener = torch.linalg.solve_triangular(chol, eye, upper=False)
        self.mean, self.whitener = mean.float().cpu(), whitener.float().cpu()
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("distance 'mahalanobis': not fitted; call fit(residuals of normal validation images) "
                                 "or load_state_dict() from a checkpoint first")

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
