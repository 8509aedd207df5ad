"""Benchmark: the trained heads at the apps' ``cpu``-preset shapes on the CPU, forward and forward + backward: the ViM
feature reconstructor (ALMRR), the refiner U-Net, the ViM image autoencoder and the mixture density head (VMPFD-AD).

Run: ``.venv/bin/python -m pytest benchmarks/test_heads_bench.py --benchmark-columns=min,median,mean,rounds``.
Bars (2 cores, fp32): each forward + backward at batch 2 under 2 s.
"""

from __future__ import annotations

import pytest
import torch

from ssmad.core import build

CASES = {
    "reconstructor/vim": ({"in_channels": 152, "feature_size": 64, "patch": 4, "hidden": 128, "d_model": 128,
                           "depth": 2}, (2, 152, 64, 64)),
    "head/refiner": ({"in_channels": 2, "out_channels": 2}, (2, 2, 64, 64)),
    "autoencoder/vim_ae": ({"img_size": 256, "patch": 32, "d_model": 192, "depth": 4}, (2, 3, 256, 256)),
    "head/mdn": ({"in_channels": 192, "n_components": 4}, (2, 192, 8, 8)),
}


def _loss(net, x):
    out = net.nll(x) if hasattr(net, "nll") else net(x)
    out = out[0] if isinstance(out, tuple) else out
    return out.float().mean()


@pytest.mark.parametrize("case", sorted(CASES))
def test_head_forward_backward(benchmark, case):
    kind, name = case.split("/")
    params, shape = CASES[case]
    torch.manual_seed(0)
    net = build(kind, name, **params).train()
    x = torch.rand(*shape)

    def step():
        net.zero_grad(set_to_none=True)
        loss = _loss(net, x)
        loss.backward()
        return loss

    loss = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(loss)
    assert benchmark.stats.stats.median < 2.0


def test_ssim_loss_forward_backward(benchmark):
    """VMPFD-AD's SSIM term at its cpu preset's batch (16 images at 256 px)."""
    from ssmad.heads.losses import ssim

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 3, 256, 256, generator=gen) * 2 - 1).requires_grad_()
    y = torch.rand(16, 3, 256, 256, generator=gen) * 2 - 1

    def step():
        x.grad = None
        loss = 1 - ssim(x, y)
        loss.backward()
        return loss

    loss = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(loss) and x.grad is not None
