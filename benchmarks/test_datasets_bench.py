"""Benchmark: reading one MT-defect test sample (JPEG + PNG mask → 3×256×256 and 1×256×256 tensors), and building
the demo dataset from scratch.

Run: ``.venv/bin/python -m pytest benchmarks/test_datasets_bench.py --benchmark-columns=min,median,mean,rounds``.
Bars: under 50 ms per sample (3-10 ms on an idle machine, files cold or warm); under 2 s for the default demo.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmad.datasets import DemoConfig, MTDConfig, build_demo, build_mtd
from ssmad.datasets import demo as demo_module

MTD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mt-defect"


@pytest.mark.skipif(not (MTD / "MT_Free").is_dir(), reason="shared MT defect data not available")
def test_mtd_sample(benchmark):
    ds = build_mtd(MTDConfig(root=str(MTD)))
    counter = iter(range(10**9))
    sample = benchmark(lambda: ds.test[len(ds.test) - 1 - next(counter) % 200])
    assert sample.label == 1
    assert benchmark.stats.stats.median < 0.05


def test_demo_build(benchmark):
    def fresh():
        demo_module._generate.cache_clear()
        return build_demo(DemoConfig())

    ds = benchmark.pedantic(fresh, rounds=3, iterations=1)
    assert len(ds.test) == 50
    assert benchmark.stats.stats.median < 2.0
