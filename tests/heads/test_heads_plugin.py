"""Registry integration: every heads component is found by name, builds, and rejects bad values."""

from __future__ import annotations

import pytest
import torch

from ssmad.core import ConfigError, build, components, describe

SMALL = {
    ("reconstructor", "vim"): {"in_channels": 8, "hidden": 8, "feature_size": 8, "patch": 4, "d_model": 8,
                               "depth": 1, "decoder_widths": [4]},
    ("reconstructor", "cnn1x1"): {"in_channels": 8, "hidden": 8, "feature_size": 8, "d_model": 8, "depth": 1},
    ("reconstructor", "cnn3x3"): {"in_channels": 8, "hidden": 8, "feature_size": 8, "d_model": 8, "depth": 1},
    ("reconstructor", "transformer"): {"in_channels": 8, "hidden": 8, "feature_size": 8, "d_model": 8, "depth": 1,
                                       "heads": 2},
    ("autoencoder", "vim_ae"): {"img_size": 64, "patch": 32, "d_model": 8, "depth": 1, "decoder_widths": [4] * 5},
    ("autoencoder", "cnn_ae"): {"img_size": 64, "patch": 32, "d_model": 8, "decoder_widths": [4] * 5},
    ("head", "refiner"): {"base_width": 2, "levels": 3},
    ("head", "mdn"): {"in_channels": 8, "hidden": 8, "bottleneck": 4},
}
BAD = {"vim": {"d_state": 0}, "cnn1x1": {"patch": -1}, "cnn3x3": {"in_channels": 1.5},
       "transformer": {"mlp_ratio": 0}, "vim_ae": {"depth": 0}, "cnn_ae": {"img_size": "big"},
       "refiner": {"out_channels": 0}, "mdn": {"context": "everywhere"}}


def test_every_component_is_registered_by_the_heads_distribution():
    names = {(c.kind, c.name) for c in components() if c.distribution == "ssmad-heads"}
    assert names == set(SMALL)
    for kind, name in SMALL:
        assert describe(kind, name).summary


@pytest.mark.parametrize("kind,name", sorted(SMALL))
def test_build_from_registry_and_run(kind, name):
    torch.manual_seed(0)
    module = build(kind, name, **SMALL[(kind, name)])
    assert isinstance(module, torch.nn.Module)
    module.eval()
    with torch.no_grad():
        if name in ("vim_ae", "cnn_ae"):
            recon, latent = module(torch.rand(1, 3, 64, 64))
            assert recon.shape == (1, 3, 64, 64) and latent.shape == (1, 8, 2, 2)
        elif name == "mdn":
            assert module.nll(torch.randn(1, 8, 3, 3)).shape == (1, 3, 3)
        elif name == "refiner":
            assert module(torch.randn(1, 2, 8, 8)).shape == (1, 2, 8, 8)
        else:
            assert module(torch.randn(1, 8, 8, 8)).shape == (1, 8, 8, 8)


@pytest.mark.parametrize("kind,name", sorted(SMALL))
def test_bad_value_is_a_config_error_naming_the_key(kind, name):
    (key, value), = BAD[name].items()
    with pytest.raises(ConfigError, match=key) as info:
        build(kind, name, **{**SMALL[(kind, name)], key: value})
    assert "\n" not in str(info.value)


def test_mdn_requires_in_channels():
    with pytest.raises(ConfigError, match="in_channels"):
        build("head", "mdn")


@pytest.mark.parametrize(("kind", "name"), [("reconstructor", "vim"), ("autoencoder", "vim_ae")])
def test_unknown_scan_backend_is_a_config_error(kind, name):
    with pytest.raises(ConfigError, match="scan"):
        build(kind, name, scan="no-such-scan")
