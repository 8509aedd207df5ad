"""FRM refinement U-Net: shapes, widths, skips, gradient flow, input-size errors."""

from __future__ import annotations

import pytest
import torch

from ssmad.core import ConfigError, build
from ssmad.heads import RefinerUNet, level_widths


def test_default_widths_follow_draem():
    assert level_widths(64, 6) == [64, 128, 256, 512, 512, 512]
    net = build("head", "refiner")
    assert [blk[0].out_channels for blk in net.encoder] == [64, 128, 256, 512, 512, 512]
    assert len(net.decoder) == 5 and net.head.kernel_size == (1, 1) and net.head.out_channels == 2
    assert net.encoder[0][0].in_channels == 2


def test_64x64_input_reaches_a_2x2_bottleneck_and_returns_full_size_logits():
    torch.manual_seed(0)
    net = build("head", "refiner", base_width=4)
    seen = []
    net.encoder[-1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(2, 2, 64, 64)
    logits = net(x)
    assert logits.shape == (2, 2, 64, 64) and torch.isfinite(logits).all()
    assert seen == [torch.Size([2, 32, 2, 2])]


def test_gradient_reaches_every_parameter_and_the_input():
    torch.manual_seed(0)
    net = RefinerUNet(in_channels=3, out_channels=2, base_width=2, levels=4)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(net(x), torch.randint(0, 2, (2, 16, 16)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_skips_carry_fine_detail():
    """The logit at a pixel depends on the input right around it (the full-resolution skip is wired in)."""
    torch.manual_seed(0)
    net = RefinerUNet(base_width=8, levels=3).eval()
    x = torch.randn(1, 2, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[0, 1, 5, 9], x)
    assert grad[0, :, 4:7, 8:11].abs().sum() > 0


@pytest.mark.parametrize("levels,size", [(1, 5), (2, 6), (3, 12)])
def test_other_depths(levels, size):
    net = RefinerUNet(base_width=2, levels=levels).eval()
    assert net(torch.randn(1, 2, size, size)).shape == (1, 2, size, size)


def test_bad_inputs_and_config():
    net = RefinerUNet(base_width=2, levels=6)
    with pytest.raises(ConfigError, match="divisible by 32"):
        net(torch.randn(1, 2, 48, 48))
    with pytest.raises(ConfigError, match="B×2×H×W"):
        net(torch.randn(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="levels"):
        build("head", "refiner", levels=0)
