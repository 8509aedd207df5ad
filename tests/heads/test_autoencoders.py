"""VMARN image autoencoders: shapes, the [-1, 1] convention, encode/decode, gradients, config checks."""

from __future__ import annotations

import pytest
import torch

from ssmad.core import ConfigError, build
from ssmad.heads import ImageAutoencoder, image_decoder

TINY = {"d_model": 16, "decoder_widths": [8, 8, 8, 8, 4]}


@pytest.fixture(scope="module", params=["vim_ae", "cnn_ae"])
def tiny_ae(request) -> tuple[str, ImageAutoencoder]:
    torch.manual_seed(0)
    extra = {"depth": 1} if request.param == "vim_ae" else {}
    return request.param, build("autoencoder", request.param, **TINY, **extra)


def test_256_input_gives_8x8_latent_and_recon_in_range(tiny_ae):
    name, ae = tiny_ae
    ae.train()
    x = torch.rand(2, 3, 256, 256)
    x[0] = 0.0  # extremes of the input range
    x[1, :, :128] = 1.0
    recon, latent = ae(x)
    assert recon.shape == (2, 3, 256, 256) and latent.shape == (2, 16, 8, 8)
    assert torch.isfinite(recon).all() and recon.min() >= -1.0 and recon.max() <= 1.0
    assert recon.min() < 0 < recon.max()  # both halves of [-1, 1] are reachable


def test_encode_decode_compose_to_forward(tiny_ae):
    name, ae = tiny_ae
    ae.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        recon, latent = ae(x)
        torch.testing.assert_close(ae.encode(x), latent)
        torch.testing.assert_close(ae.decode(latent), recon)
        # the input is mapped to [-1, 1] before the encoder: encode(x) == encoder(x*2 - 1)
        torch.testing.assert_close(ae.encoder(x * 2 - 1), latent)
    torch.testing.assert_close(ae.target(x), x * 2 - 1)


def test_gradient_reaches_every_parameter(tiny_ae):
    name, ae = tiny_ae
    ae.train()
    ae.zero_grad()
    x = torch.rand(2, 3, 256, 256)
    recon, _ = ae(x)
    torch.nn.functional.mse_loss(recon, ae.target(x)).backward()
    for pname, p in ae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: {pname}"


def test_default_decoder_is_six_transposed_convs_8_to_256():
    dec = image_decoder(192, (256, 128, 64, 32, 16))
    convs = [m for m in dec if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 6
    assert [c.out_channels for c in convs] == [256, 128, 64, 32, 16, 3]
    assert [c.stride for c in convs] == [(2, 2)] * 5 + [(1, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in dec) == 5 and isinstance(dec[-1], torch.nn.Tanh)
    narrow = image_decoder(4, (2, 2, 2, 2, 2)).eval()  # same kernels/strides, cheap widths
    assert narrow(torch.randn(1, 4, 8, 8)).shape == (1, 3, 256, 256)


def test_other_patch_sizes():
    ae = build("autoencoder", "cnn_ae", img_size=64, patch=8, d_model=8, decoder_widths=[4, 4, 4]).eval()
    recon, latent = ae(torch.rand(1, 3, 64, 64))
    assert recon.shape == (1, 3, 64, 64) and latent.shape == (1, 8, 8, 8)


@pytest.mark.parametrize("params,key", [
    ({"decoder_widths": [8, 8, 8]}, "decoder_widths"),  # patch 32 needs 5 up-steps
    ({"patch": 24}, "patch"),
    ({"img_size": 250}, "img_size"),
    ({"d_model": 0}, "d_model"),
    ({"decoder_widths": [8, 8, 0, 8, 8]}, "decoder_widths"),
])
def test_config_errors(params, key):
    for name in ("vim_ae", "cnn_ae"):
        with pytest.raises(ConfigError, match=key):
            build("autoencoder", name, **params)


def test_input_size_must_be_a_multiple_of_the_patch(tiny_ae):
    name, ae = tiny_ae
    with pytest.raises(ConfigError, match="multiples of 32"):
        ae(torch.rand(1, 3, 100, 128))
    ae.eval()
    with torch.no_grad():
        recon, latent = ae(torch.rand(1, 3, 128, 96))  # another size: the reconstruction follows the input
    assert recon.shape == (1, 3, 128, 96) and latent.shape == (1, 16, 4, 3)


def test_a_resize_decoder_has_no_border_a_transposed_one_has():
    """The cause of VMPFD-AD's border errors: a latent that is the same at every position decodes, through the
    transposed convolutions, to an image whose border differs from its interior (fewer taps reach the border at
    each step); through resize + replicate-padded convolutions, to a constant image."""
    from ssmad.heads.autoencoders import image_decoder

    torch.manual_seed(0)
    latent = torch.randn(1, 8, 1, 1).expand(1, 8, 4, 4).contiguous()
    spread = {}
    for upsample in ("transposed", "resize"):
        dec = image_decoder(8, (8, 8, 8), upsample=upsample).eval()
        with torch.no_grad():
            out = dec(latent)[0]
        assert out.shape == (3, 32, 32)
        interior = out[:, 4:-4, 4:-4]
        spread[upsample] = float((out - interior.mean((1, 2), keepdim=True)).abs().max())
    assert spread["resize"] < 1e-5
    assert spread["transposed"] > 1e-2
    with pytest.raises(ValueError, match="upsample"):
        image_decoder(8, (8,), upsample="bilinear")
