"""Benchmark: ``ssmad.scoring.evaluate`` on 200 anomaly maps of 256×256 (13.1 M pixels), all seven metrics.

Run: ``.venv/bin/python -m pytest benchmarks/test_scoring_bench.py --benchmark-columns=min,median,mean,rounds``.
Bar: under 5 s per call on 2 CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from ssmad.scoring import METRICS, evaluate

N, SIZE = 200, 256
BAR_SECONDS = 5.0


def realistic_case(seed: int = 0):
    """Half the images anomalous with 1-4 elliptical blobs; maps = smooth noise + a blurred response."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((N, SIZE, SIZE), dtype=bool)
    for i in range(N // 2):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(20, SIZE - 20, 2)
            ry, rx = rng.uniform(3, 25, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    noise = ndimage.gaussian_filter(rng.standard_normal((N, SIZE, SIZE)).astype(np.float32), (0, 2, 2))
    response = ndimage.gaussian_filter(masks.astype(np.float32), (0, 3, 3))
    maps = (noise + 0.8 * response).astype(np.float32)[:, None]
    labels = masks.any(axis=(1, 2)).astype(np.int64)
    scores = maps.reshape(N, -1).max(axis=1)
    return labels, scores, masks[:, None], maps


@pytest.fixture(scope="module")
def case():
    return realistic_case()


def test_evaluate_200_maps_256(benchmark, case):
    labels, scores, masks, maps = case
    result = benchmark.pedantic(evaluate, args=(labels, scores, masks, maps), rounds=3, iterations=1,
                                warmup_rounds=1)
    assert list(result) == list(METRICS)
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in result.values())
    assert benchmark.stats.stats.min < BAR_SECONDS
