"""Benchmark: one ``perlin`` synthesis draw on a 256×256 RGB image (ALMRR's training input).

Run: ``.venv/bin/python -m pytest benchmarks/test_synth_bench.py --benchmark-columns=min,median,mean,rounds``.
Bar: under 100 ms per draw (about 25 ms on an idle core), so one data-loader worker keeps up with training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssmad.core import build

DTD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dtd"
BAR_SECONDS = 0.1


@pytest.mark.parametrize("source", ["bundled", "dtd"])
def test_perlin_draw(benchmark, source):
    if source == "dtd" and not DTD.is_dir():
        pytest.skip("shared DTD textures not available")
    synth = build("synth", "perlin", texture_dir=str(DTD) if source == "dtd" else None, p_clean=0.0)
    image = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    rng = np.random.default_rng(1)
    result = benchmark(lambda: synth(image, rng))
    assert result[2].any()
    assert benchmark.stats.stats.median < BAR_SECONDS
