"""ViM encoder, blocks, norms and the token ↔ map conversions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import ConfigError
from ssmad.ssm import DropPath, RMSNorm, ViMBlock, ViMEncoder, map_to_tokens, tokens_to_map


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 7), w=st.integers(1, 7))
def test_tokens_map_round_trip_keeps_positions(b, c, h, w):
    # a spatially distinct map: every (sample, channel, row, column) holds its own code
    codes = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    tokens, hw = map_to_tokens(codes)
    assert hw == (h, w) and tokens.shape == (b, h * w, c)
    for i in range(h):
        for j in range(w):
            assert torch.equal(tokens[:, i * w + j, :], codes[:, :, i, j])   # token i·w+j is patch (i, j)
    assert torch.equal(tokens_to_map(tokens, hw), codes)
    # and the other way round
    t = torch.randn(b, h * w, c)
    assert torch.equal(map_to_tokens(tokens_to_map(t, (h, w)))[0], t)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 4), p=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       extra=st.integers(0, 3))
def test_patch_tokens_are_the_strided_convolution(b, c, p, h, w, extra):
    """The embedding's matrix product equals the Conv2d (kernel = stride = patch) it stands for, token order and
    gradients included, also on a grid other than the built one and on sizes that are no multiple of the patch
    (the convolution drops the remainder)."""
    torch.manual_seed(b * 1000 + c * 100 + p * 10 + h)
    enc = ViMEncoder(c, (2 * p, 3 * p), p, d_model=5, depth=0).double()
    x = torch.randn(b, c, h * p + extra % p, w * p + extra // 2 % p, dtype=torch.float64, requires_grad=True)
    tokens, hw = enc.patch_tokens(x)
    want, want_hw = map_to_tokens(enc.patch_embed(x))
    assert hw == want_hw == (h, w)
    torch.testing.assert_close(tokens, want)
    g = torch.randn_like(tokens)
    grads = torch.autograd.grad(tokens, [x, enc.patch_embed.weight, enc.patch_embed.bias], g)
    want_grads = torch.autograd.grad(want, [x, enc.patch_embed.weight, enc.patch_embed.bias], g)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref)


def test_raw_view_would_scramble():
    """The bug the helpers avoid: viewing a B×C×h×w map as B×L×C mixes channels and positions."""
    codes = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert not torch.equal(codes.view(2, 4, 3), map_to_tokens(codes)[0])
    with pytest.raises(ValueError):
        tokens_to_map(torch.zeros(1, 5, 3), (2, 2))


def tiny_encoder(**kw) -> ViMEncoder:
    torch.manual_seed(0)
    args = {"in_chans": 3, "img_size": 16, "patch_size": 4, "d_model": 16, "depth": 2, "d_state": 4,
            "scan": "torch"}
    args.update(kw)
    return ViMEncoder(**args)


def test_encoder_shapes_and_halves():
    enc = tiny_encoder()
    x = torch.rand(2, 3, 16, 16)
    out = enc(x)
    assert out.shape == (2, 16, 4, 4)
    tokens, hw = enc.embed(x)
    assert hw == (4, 4) and tokens.shape == (2, 16, 16)
    torch.testing.assert_close(tokens_to_map(enc.forward_tokens(tokens), hw), out)
    rect = tiny_encoder(img_size=(8, 16))
    assert rect(torch.rand(1, 3, 8, 16)).shape == (1, 16, 2, 4)
    # a different input size uses the resized position grid
    assert enc(torch.rand(1, 3, 24, 8)).shape == (1, 16, 6, 2)


def test_encoder_gradients_reach_every_parameter():
    enc = tiny_encoder()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    enc(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_encoder_position_embedding_and_drop_path_schedule():
    enc = tiny_encoder(depth=4, drop_path=0.3)
    assert enc.pos_embed.shape == (1, 16, 16)
    assert 0.01 < enc.pos_embed.std().item() < 0.03
    rates = [blk.drop_path.p for blk in enc.blocks] + [enc.drop_path.p]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])   # block i drops block i-1's output
    enc.eval()
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(enc(x), enc(x))                   # no randomness in eval


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match="img_size"):
        tiny_encoder(img_size=18)
    with pytest.raises(ConfigError, match="drop_path"):
        tiny_encoder(drop_path=1.0)
    with pytest.raises(ConfigError, match="d_state"):
        tiny_encoder(d_state=0)
    with pytest.raises(ConfigError, match="scan"):
        tiny_encoder(scan="nope")
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="B×3×H×W"):
        enc(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        enc(torch.rand(1, 3, 18, 16))


def test_block_keeps_residual_in_float32():
    blk = ViMBlock(8, d_state=4, scan="torch")
    hidden, residual = blk(torch.randn(2, 5, 8))
    assert residual.dtype == torch.float32 and hidden.shape == (2, 5, 8)
    hidden2, residual2 = blk(hidden, residual)
    torch.testing.assert_close(residual2, residual + hidden)


@settings(max_examples=15, deadline=None)
@given(dim=st.integers(1, 32), scale=st.floats(1e-2, 1e3))
def test_rmsnorm_unit_rms(dim, scale):
    x = torch.randn(3, dim) * scale
    norm = RMSNorm(dim, eps=1e-5)
    y = norm(x)
    ms = x.pow(2).mean(-1)
    torch.testing.assert_close(y.pow(2).mean(-1), ms / (ms + 1e-5), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        norm.weight.fill_(3.0)
    torch.testing.assert_close(norm(x), 3 * y)


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and torch.all(y[~kept] == 0)
    assert 350 < kept.sum() < 650
    assert torch.equal(DropPath(0.0).train()(x), x)
