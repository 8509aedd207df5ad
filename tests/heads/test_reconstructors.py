"""ALMRR feature reconstructors: one skeleton, four mixers; shapes, gradients, token layout, decoder sizes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import ConfigError, build
from ssmad.heads import FeatureReconstructor, TokenEncoder, decoder_output_size, feature_decoder

NAMES = ["vim", "cnn1x1", "cnn3x3", "transformer"]
TINY = {"in_channels": 32, "hidden": 16, "feature_size": 16, "patch": 4, "d_model": 16, "depth": 2,
        "decoder_widths": [8, 8]}


def tiny(name: str, **over) -> FeatureReconstructor:
    extra = {"heads": 4} if name == "transformer" else {}
    return build("reconstructor", name, **{**TINY, **extra, **over})


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_gradient_flow(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    feats = torch.randn(2, 32, 16, 16, requires_grad=True)
    out = model(feats)
    assert out.shape == (2, 32, 16, 16) and torch.isfinite(out).all()
    ((out - feats.detach()) ** 2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert model.encoder(model.reduce(feats)).shape == (2, 16, 4, 4)  # d_model × (S/p) × (S/p) token map


def test_all_share_one_skeleton_and_differ_only_in_the_encoder_blocks():
    models = {name: tiny(name) for name in NAMES}
    assert {type(m) for m in models.values()} == {FeatureReconstructor}
    outer = {name: {k: v.shape for k, v in m.state_dict().items() if not k.startswith("encoder.")}
             for name, m in models.items()}
    assert all(o == outer["vim"] for o in outer.values())  # identical reduce / decoder / expand
    ablations = [models[n].encoder for n in ("cnn1x1", "cnn3x3", "transformer")]
    assert all(type(e) is TokenEncoder for e in ablations)
    # the ablations' embedding and final norm are a block-less ViMEncoder: the same code and shapes as vim's
    vim = models["vim"].encoder
    assert all(type(e.stem) is type(vim) and len(e.stem.blocks) == 0 for e in ablations)
    stem = {k: v.shape for k, v in vim.state_dict().items() if not k.startswith("blocks.")}
    assert all({k: v.shape for k, v in e.stem.state_dict().items()} == stem for e in ablations)
    assert {(e.grid, len(e.blocks)) for e in ablations} == {((4, 4), 2)} and vim.grid == (4, 4)


@pytest.mark.parametrize("kernel_name,reach", [("cnn1x1", 0), ("cnn3x3", 1)])
def test_token_layout_is_spatially_faithful(kernel_name, reach):
    """Perturbing one input patch changes only that token (1×1) or its 3×3 neighbourhood (3×3, one block):
    tokens are mapped back with a transpose, never a raw view that would scramble space."""
    torch.manual_seed(0)
    enc = tiny(kernel_name, depth=1, drop_path=0.0).encoder.eval()
    x = torch.randn(1, 16, 16, 16)
    y = x.clone()
    y[0, :, 4:8, 8:12] += 1.0  # patch row 1, column 2
    with torch.no_grad():
        changed = (enc(y) - enc(x)).abs().amax(dim=1)[0] > 1e-6
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[max(1 - reach, 0):2 + reach, max(2 - reach, 0):3 + reach] = True
    assert torch.equal(changed, expected)


def test_default_decoder_sizes_match_almrr():
    assert decoder_output_size(16, 3) == 39  # 16 → 18 → 20 → 39, then bilinear to 64
    dec = feature_decoder(4, (2, 2), 2).eval()  # same kernels and strides as 192→256→512→1024, cheap widths
    assert dec(torch.randn(1, 4, 16, 16)).shape == (1, 2, 39, 39)
    full = build("reconstructor", "cnn1x1")
    convs = [m for m in full.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(192, 256, (1, 1)), (256, 512, (1, 1)),
                                                                          (512, 1024, (2, 2))]
    assert isinstance(full.decoder[-1], torch.nn.Tanh)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in full.decoder) == 2
    assert (full.reduce.in_channels, full.reduce.out_channels) == (1792, 1024)
    assert (full.expand.in_channels, full.expand.out_channels) == (1024, 1792)
    assert full.encoder.grid == (16, 16) and full.encoder.stem.pos_embed.shape == (1, 256, 192)
    assert len(full.encoder.blocks) == 8


@settings(max_examples=15, deadline=None)
@given(grid=st.integers(1, 6), n=st.integers(1, 3))
def test_decoder_output_size_formula(grid, n):
    dec = feature_decoder(2, (2,) * (n - 1) if n > 1 else (2,), 2).eval()
    n_convs = max(n, 2)
    assert dec(torch.randn(1, 2, grid + 1, grid + 1)).shape[-1] == decoder_output_size(grid + 1, n_convs)


def test_drop_path_schedule_rises_linearly():
    model = tiny("cnn3x3", depth=3, drop_path=0.2)
    assert [b.drop_path.p for b in model.encoder.blocks] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("params,key", [
    ({"feature_size": 18}, "feature_size"),
    ({"hidden": 0}, "hidden"),
    ({"decoder_widths": []}, "decoder_widths"),
    ({"drop_path": 1.5}, "drop_path"),
    ({"depth": "eight"}, "depth"),
    ({"widths": [1]}, "widths"),
])
def test_config_errors(name, params, key):
    with pytest.raises(ConfigError, match=key):
        tiny(name, **params)


def test_transformer_heads_must_divide_width():
    with pytest.raises(ConfigError, match="heads"):
        build("reconstructor", "transformer", d_model=16, heads=3)


def test_wrong_feature_shape_is_a_clear_error():
    with pytest.raises(ConfigError, match="B×32×16×16"):
        tiny("cnn1x1")(torch.randn(1, 32, 8, 8))
