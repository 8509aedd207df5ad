"""ssmad-ssm benchmarks (pytest-benchmark; not part of the default test run, which collects only ``tests/``).

    .venv/bin/python -m pytest benchmarks/test_ssm_bench.py --benchmark-only

Shapes are ALMRR's: the scan of one mixer direction (batch 4, d_inner 384, 256 tokens, d_state 16) and the ViM
feature reconstructor's encoder (1024×64×64 features, patch 4 → 16×16 tokens, d_model 192, depth 8, batch 4).
For a side-by-side table with speed-up ratios and peak memory: ``python -m ssmad.ssm.bench``.
"""

from __future__ import annotations

import pytest
import torch

from ssmad.ssm import ViMEncoder, cpu_kernel_available, cpu_kernel_status
from ssmad.ssm.bench import BACKENDS, make_inputs

ALMRR_SCAN = (4, 384, 256, 16)
needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason=f"CPU scan kernel {cpu_kernel_status()}")
NAMES = ["reference", "torch", pytest.param("cpu", marks=needs_kernel)]


@pytest.mark.parametrize("backend", NAMES)
def test_scan_forward(benchmark, backend):
    fn = BACKENDS[backend]
    inputs = make_inputs(*ALMRR_SCAN, grad=False)

    def run():
        with torch.no_grad():
            return fn(**inputs, delta_softplus=True)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape == (4, 384, 256)


@pytest.mark.parametrize("backend", NAMES)
def test_scan_forward_backward(benchmark, backend):
    fn = BACKENDS[backend]
    inputs = make_inputs(*ALMRR_SCAN, grad=True)

    def run():
        for v in inputs.values():
            v.grad = None
        fn(**inputs, delta_softplus=True).sum().backward()
        return inputs["A"].grad

    grad = benchmark.pedantic(run, rounds=3 if backend == "reference" else 5, warmup_rounds=1)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("scan", ["torch", pytest.param("cpu", marks=needs_kernel)])
def test_vim_encoder_forward_almrr(benchmark, scan):
    torch.manual_seed(0)
    enc = ViMEncoder(in_chans=1024, img_size=64, patch_size=4, d_model=192, depth=8, scan=scan).eval()
    x = torch.randn(4, 1024, 64, 64)

    def run():
        with torch.no_grad():
            return enc(x)

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert out.shape == (4, 192, 16, 16)
