"""ALMRR's ``[method]`` section (read with :func:`apps.common.settings.read_section`). A default is the paper's
value, or what a run stored before the key existed did."""

from __future__ import annotations

from typing import Any

import attrs

from ..common.settings import NUMBER, is_weight, setting
from .fusion import FUSIONS

REFINER_INPUTS = ("recon_mean", "feature_mean", "distance")
AUTO_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)   # distance_weight = "auto" chooses among these by default


def _refiner_inputs(value: Any) -> bool:
    return bool(value) and len(set(value)) == len(value) and all(k in REFINER_INPUTS for k in value)


def _candidates(value: Any) -> bool:
    return bool(value) and all(map(is_weight, value))


@attrs.frozen(kw_only=True)
class ALMRRSettings:
    """``feature_size``: the grid the backbone stages are resized to; ``lambda_*``, ``focal_gamma``: the losses;
    ``refiner_inputs``: the refiner's input channels (the paper: the two channel means); ``distance_weight``: the
    weight of the scaled distance map added to the refined map, or "auto" (chosen after training among
    ``distance_weight_candidates``); ``fusion``: how the two maps join (apps/almrr/fusion.py);
    ``image_distance_weight``: the image score's own weight, or "map" (the map's score); ``feature_cache_mb``: the
    memory that keeps the frozen backbone's outputs of training images a draw leaves as they are, so that later
    epochs do not compute them again (0: none)."""

    feature_size: int = setting(64, int, lambda v: v >= 4, "an integer >= 4")
    lambda_rec: float = setting(1.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    lambda_focal: float = setting(1.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    lambda_dice: float = setting(1.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    focal_gamma: float = setting(2.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    refiner_inputs: tuple[str, ...] = setting(REFINER_INPUTS[:2], list, _refiner_inputs,
                                              f"a list of distinct names from {list(REFINER_INPUTS)}", tuple)
    distance_weight: float | str = setting(0.0, (int, float, str), lambda v: v == "auto" or is_weight(v),
                                           'a number >= 0 or "auto"')
    distance_weight_candidates: tuple[float, ...] = setting(
        AUTO_WEIGHTS, list, _candidates, "a non-empty list of numbers >= 0",
        lambda v: tuple(sorted({float(w) for w in v})))
    fusion: str = setting("sum", str, lambda v: v in FUSIONS, f"one of {list(FUSIONS)}")
    image_distance_weight: float | str = setting("map", (int, float, str), lambda v: v == "map" or is_weight(v),
                                                 'a number >= 0 or "map"')
    feature_cache_mb: float = setting(0, NUMBER, lambda v: v >= 0, "a number >= 0 (0: no cache)", float)
