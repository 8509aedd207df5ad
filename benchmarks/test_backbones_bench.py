"""Benchmark: the frozen feature extractors' forward at the shapes the apps use, on the CPU (random weights: the
time is the same as with ImageNet ones), and the stage concatenation that follows it.

Run: ``.venv/bin/python -m pytest benchmarks/test_backbones_bench.py --benchmark-columns=min,median,mean,rounds``.
Bars (2 cores): EfficientNet-Lite0 to stage5 on 2×3×256×256 under 0.5 s; ResNet-18 layers 1-3 under 0.5 s;
PDN-small on 2×3×256×256 under 0.5 s; the concatenation of Lite0's stages to 64×64 under 20 ms.
"""

from __future__ import annotations

import pytest
import torch

from ssmad.backbones import concat_stages
from ssmad.core import build

CASES = {
    "efficientnet_lite0": {"weights": "none", "layers": ["stage3", "stage5"]},
    "resnet18": {"weights": "none"},
    "pdn_small": {"weights": "none"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backbone_forward(benchmark, name):
    torch.manual_seed(0)
    net = build("backbone", name, **CASES[name]).eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        out = benchmark.pedantic(lambda: net(x), rounds=5, iterations=1, warmup_rounds=1)
    assert len(out) >= 1 and out[0].shape[0] == 2
    assert benchmark.stats.stats.median < 0.5


def test_concat_stages(benchmark):
    maps = [torch.rand(2, 40, 32, 32), torch.rand(2, 112, 16, 16)]
    out = benchmark(lambda: concat_stages(maps, 64))
    assert out.shape == (2, 152, 64, 64)
    assert benchmark.stats.stats.median < 0.02
