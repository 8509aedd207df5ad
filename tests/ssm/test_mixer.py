"""The bidirectional Mamba (ViM v2) mixer: both directions run, initialisation, registry and config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import ConfigError, build
from ssmad.ssm import BiMambaMixer, causal_conv1d


def small_mixer(**kw) -> BiMambaMixer:
    torch.manual_seed(kw.pop("seed", 0))
    kw.setdefault("scan", "torch")
    return BiMambaMixer(kw.pop("d_model", 8), d_state=kw.pop("d_state", 4), **kw)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), length=st.integers(1, 24), seed=st.integers(0, 2**31 - 1))
def test_mixer_is_mean_of_forward_and_flipped_backward_halves(b, length, seed):
    m = small_mixer(seed=seed % 1000)
    x = torch.randn(b, length, 8, generator=torch.Generator().manual_seed(seed))
    fwd = m.forward_half(x)
    bwd = m.backward_half(x.flip(1)).flip(1)
    expected = m.out_proj((fwd + bwd) / 2)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)
    assert fwd.shape == bwd.shape == (b, length, m.d_inner)


def test_both_directions_contribute():
    """Token 0's output depends on the last token (backward branch) and the last's on token 0 (forward branch);
    each half alone is causal in its own direction."""
    m = small_mixer()
    x = torch.randn(2, 12, 8)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(m(x)[:, 0], m(x2)[:, 0])              # anti-causal path exists
    torch.testing.assert_close(m.forward_half(x)[:, :-1], m.forward_half(x2)[:, :-1], rtol=0, atol=1e-6)
    x3 = x.clone()
    x3[:, 0] += 1.0
    assert not torch.allclose(m(x)[:, -1], m(x3)[:, -1])            # causal path exists
    torch.testing.assert_close(m.backward_half(x.flip(1)).flip(1)[:, 1:],
                               m.backward_half(x3.flip(1)).flip(1)[:, 1:], rtol=0, atol=1e-6)
    # and the backward direction's own parameters matter
    out = m(x)
    with torch.no_grad():
        m.A_b_log.add_(1.0)
    assert not torch.allclose(m(x), out)


def test_unidirectional_mixer_is_causal_and_has_no_backward_parameters():
    m = small_mixer(bidirectional=False)
    assert not any(name.endswith("_b") or "_b." in name or name == "A_b_log" for name, _ in m.named_parameters())
    x = torch.randn(1, 10, 8)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(1, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(x2)[:, :6], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="bidirectional=False"):
        m.backward_half(x)


def test_initialisation():
    m = small_mixer(d_model=32, d_state=16, dt_min=1e-3, dt_max=0.1)
    assert m.dt_rank == math.ceil(32 / 16) and m.d_inner == 64
    expected = torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(64, 1)
    for a_log, d, dt_proj in ((m.A_log, m.D, m.dt_proj), (m.A_b_log, m.D_b, m.dt_proj_b)):
        torch.testing.assert_close(a_log.detach(), expected)
        assert torch.equal(d.detach(), torch.ones(64))
        dt = F.softplus(dt_proj.bias.detach())
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
        assert dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
    # the two directions start from independent draws
    assert not torch.equal(m.dt_proj.bias, m.dt_proj_b.bias)
    assert m.x_proj.weight.shape == (m.dt_rank + 32, 64)
    assert m.in_proj.bias is None and m.out_proj.bias is None


def test_reference_and_torch_scans_give_the_same_mixer():
    m = small_mixer(scan="torch")
    ref = small_mixer(scan="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 17, 8, requires_grad=True)
    out, out_ref = m(x), ref(x)
    torch.testing.assert_close(out, out_ref, rtol=6e-4, atol=2e-3)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *m.parameters()], g)
    grads_ref = torch.autograd.grad(out_ref, [x, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 20), k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_causal_conv_matches_direct_sum(length, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, length, generator=g)
    w = torch.randn(3, 1, k, generator=g)
    bias = torch.randn(3, generator=g)
    expected = torch.empty_like(x)
    for t in range(length):
        acc = bias.clone().expand(2, 3).clone()
        for j in range(k):                       # weight tap j multiplies x[t - (k-1) + j]
            s = t - (k - 1) + j
            if s >= 0:
                acc = acc + w[:, 0, j] * x[:, :, s]
        expected[:, :, t] = F.silu(acc)
    torch.testing.assert_close(causal_conv1d(x, w, bias), expected, rtol=1e-5, atol=1e-6)


def test_registry_build_and_config_errors():
    m = build("mixer", "vim", d_model=16, d_state=4, scan="torch")
    assert isinstance(m, BiMambaMixer) and m.d_state == 4 and m.dt_rank == 1
    assert m(torch.randn(1, 5, 16)).shape == (1, 5, 16)
    assert build("mixer", "vim", d_model=16).scan_name == "auto"
    with pytest.raises(ConfigError, match="d_state"):
        build("mixer", "vim", d_model=16, d_state=0)
    with pytest.raises(ConfigError, match="d_model"):
        build("mixer", "vim")
    with pytest.raises(ConfigError, match="dt_max"):
        build("mixer", "vim", d_model=16, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ConfigError, match="scan"):
        build("mixer", "vim", d_model=16, scan="nonexistent")
    with pytest.raises(ConfigError, match="expnad"):
        build("mixer", "vim", d_model=16, expnad=2)
    with pytest.raises(ConfigError, match="d_state"):
        BiMambaMixer(16, d_state=0)


def test_a_scan_named_for_another_device_is_a_config_error(monkeypatch):
    """``scan_backend`` (asked before training or scoring) refuses a backend that cannot run on the model's device;
    ``auto`` and device-neutral backends pass."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for scan, device, needle in (("cpu", "cuda", "runs on CPU tensors only"),
                                 ("triton", "cpu", "runs on CUDA tensors only"),
                                 ("mamba_ssm", "cpu", "runs on CUDA tensors only")):
        mixer = BiMambaMixer(16, d_state=4, scan="torch")
        mixer.scan_name = scan                     # mamba_ssm is not registered without CUDA: set the name only
        with pytest.raises(ConfigError, match=f"'scan' = '{scan}': the backend {needle}, and the model runs on "
                                              f"{device}; use 'auto'"):
            mixer.scan_backend(device)
    assert BiMambaMixer(16, d_state=4, scan="torch").scan_backend("cuda") == "torch"
    assert BiMambaMixer(16, d_state=4).scan_backend("cpu") in ("cpu", "torch")


def test_bad_token_shape():
    m = small_mixer()
    with pytest.raises(ValueError, match="B×L×8"):
        m(torch.randn(2, 5, 7))
