"""ssmad-scoring plugin: registers post-processing, feature-distance, fusion and metric components."""

from __future__ import annotations

from functools import partial

from ssmad.core import hookimpl

from .distance import (
    Mahalanobis,
    MahalanobisConfig,
    MeanSquared,
    MeanSquaredConfig,
    PositionMahalanobis,
    PositionMahalanobisConfig,
)
from .fusion import WeightedFusion, WeightedFusionConfig
from .metrics import METRICS, Metric
from .normalisers import PositionNorm, PositionNormConfig, QuantileNorm, QuantileNormConfig
from .score import BoxMax, BoxMaxConfig
from .smooth import Gaussian, GaussianConfig

_METRIC_SUMMARIES = {
    "image_auroc": "image-level ROC AUC (scikit-learn)",
    "image_ap": "image-level average precision (scikit-learn)",
    "image_f1max": "image-level maximum F1 over thresholds",
    "pixel_auroc": "pixel-level ROC AUC (exact, one sorted sweep)",
    "pixel_ap": "pixel-level average precision (exact, one sorted sweep)",
    "pixel_f1max": "pixel-level maximum F1 over thresholds",
    "aupro": "area under the per-region-overlap curve for FPR <= 0.3, normalised to [0, 1]",
}


def _metric(name: str) -> Metric:
    return Metric(name)


@hookimpl
def ssmad_register(register):
    register("score", "box_max", BoxMax, config=BoxMaxConfig,
             summary="box (mean) filter then max per image: maps B×1×H×W -> scores B (ALMRR)")
    register("smooth", "gaussian", Gaussian, config=GaussianConfig,
             summary="separable Gaussian smoothing of maps, same size (scipy 'reflect' borders)")
    register("normaliser", "quantile_norm", QuantileNorm, config=QuantileNormConfig,
             summary="(m - q_low) / (q_high - q_low) with quantiles fitted on normal validation maps")
    register("normaliser", "position_norm", PositionNorm, config=PositionNormConfig,
             summary="m - mean (or z-score) per position, fitted on normal validation maps")
    register("distance", "mse", MeanSquared, config=MeanSquaredConfig,
             summary="feature distance: mean over channels of (F^ - F)^2 per position")
    register("distance", "mahalanobis", Mahalanobis, config=MahalanobisConfig,
             summary="feature distance: Mahalanobis of F^ - F, covariance fitted on normal validation residuals")
    register("distance", "position_mahalanobis", PositionMahalanobis, config=PositionMahalanobisConfig,
             summary="feature distance: Mahalanobis of F^ - F with a mean and covariance per position (PaDiM-like)")
    register("fusion", "weighted", WeightedFusion, config=WeightedFusionConfig,
             summary="weighted sum of several anomaly maps")
    for name in METRICS:
        register("metric", name, partial(_metric, name), summary=_METRIC_SUMMARIES[name])
