"""How ALMRR's map joins its two parts: the refined map R (the refiner's anomalous-class probability) and the
scaled distance map D (the feature distance mapped by ``distance_scale`` so that the 0.9 / 0.999 quantiles of
held-out normal pixels fall on 0 / 1).

``sum`` (the rule of apps ≤ 0.12): R + w · D. ``max``: max(R, w · D), a pixel is as anomalous as the branch that
finds it most: the refiner's certain defects (R near 1) and distances beyond the normal extreme (D > 1) both
reach the top, and neither branch's silence (R ≈ 0 on a defect unlike the synthetic ones) hides the other's
finding. Pure functions on tensors of one shape; no state.
"""

from __future__ import annotations

import torch

FUSIONS = ("sum", "max")


def fuse(refined: torch.Tensor, scaled: torch.Tensor, rule: str, weight: float) -> torch.Tensor:
    """The map of ``rule`` (one of :data:`FUSIONS`) with distance weight ``weight`` >= 0, of two maps of one
    shape; a ValueError for another rule (settings check it before)."""
    if rule == "sum":
        return refined + weight * scaled
    if rule == "max":
        return torch.maximum(refined, weight * scaled)
    raise ValueError(f"fusion rule {rule!r}: expected one of {list(FUSIONS)}")


def describe(rule: str, weight: float, distance: str = "distance") -> str:
    """The fused map in words (``distance`` names the distance), for logs and report titles."""
    return (f"refined + {weight:g} x scaled {distance}" if rule == "sum"
            else f"max(refined, {weight:g} x scaled {distance})")
