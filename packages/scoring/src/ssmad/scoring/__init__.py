"""ssmad scoring: anomaly-map post-processing, normalisation, fusion, metrics and reports.

    from ssmad.scoring import evaluate
    metrics = evaluate(labels, scores, masks, maps)  # image/pixel AUROC, AP, F1-max and AUPRO (FPR <= 0.3)

Components (``ssmad.core.build(kind, name, ...)``): ``score`` ``box_max`` (score.py); ``smooth`` ``gaussian``
(smooth.py); ``normaliser`` ``quantile_norm``, ``position_norm`` (normalisers.py); ``distance`` ``mse``,
``mahalanobis``, ``position_mahalanobis``; ``fusion`` ``weighted``; ``metric`` ``image_auroc``, ``image_ap``,
``image_f1max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``aupro``. Reports live in :mod:`ssmad.scoring.report`.
"""

from .distance import (
                      Mahalanobis,
                      MahalanobisConfig,
                      MeanSquared,
                      MeanSquaredConfig,
                      PositionMahalanobis,
                      PositionMahalanobisConfig,
)
from .fusion import WeightedFusion, WeightedFusionConfig
from .maps import NotFittedError
from .metrics import (
                      AUPRO_FPR_LIMIT,
                      IMAGE_METRICS,
                      METRICS,
                      PIXEL_METRICS,
                      GroupedAP,
                      Metric,
                      MetricResults,
                      MetricUndefinedWarning,
                      aupro,
                      binarize_masks,
                      bootstrap_difference,
                      evaluate,
                      pixel_metrics,
)
from .normalisers import PositionNorm, PositionNormConfig, QuantileNorm, QuantileNormConfig
from .score import BoxMax, BoxMaxConfig
from .smooth import Gaussian, GaussianConfig, gaussian_kernel1d

__version__ = "0.7.0"

__all__ = [
    "AUPRO_FPR_LIMIT", "IMAGE_METRICS", "METRICS", "PIXEL_METRICS", "BoxMax", "BoxMaxConfig", "Gaussian",
    "GaussianConfig", "GroupedAP", "Mahalanobis", "MahalanobisConfig", "MeanSquared", "MeanSquaredConfig",
    "PositionMahalanobis", "PositionMahalanobisConfig",
    "Metric", "MetricResults", "MetricUndefinedWarning", "NotFittedError",
    "PositionNorm", "PositionNormConfig", "QuantileNorm", "QuantileNormConfig", "WeightedFusion",
    "WeightedFusionConfig", "aupro", "binarize_masks", "bootstrap_difference", "evaluate", "gaussian_kernel1d",
    "pixel_metrics",
]
