"""Feature distances (kind ``distance``): mse and the fitted Mahalanobis distance of the residual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import CheckpointError, ConfigError, DataError, build
from ssmad.scoring import (
    Mahalanobis,
    MahalanobisConfig,
    MeanSquared,
    NotFittedError,
    PositionMahalanobis,
    PositionMahalanobisConfig,
)


def gaussian_residuals(n: int, c: int, seed: int, size: int = 8, draw: int = 0) -> torch.Tensor:
    """n residual maps n×c×size×size whose vectors are correlated Gaussians with channels of very different scales
    (the distribution set by ``seed``; ``draw`` picks another sample of it)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) * rng.uniform(0.1, 10, size=c)
    offset = rng.normal(size=c)
    z = np.random.default_rng([seed, draw]).normal(size=(n, size, size, c))
    return torch.from_numpy(z @ mix.T + offset).permute(0, 3, 1, 2).float().contiguous()


def test_mse_is_the_channel_mean_of_squares():
    r = torch.randn(2, 5, 3, 4)
    d = build("distance", "mse")(r)
    assert d.shape == (2, 1, 3, 4)
    torch.testing.assert_close(d, (r ** 2).mean(1, keepdim=True))
    assert MeanSquared().fitted and not MeanSquared.needs_fit


def test_mahalanobis_matches_the_formula():
    """(r − μ)ᵀ (Σ + ridge·tr(Σ)/C·I)⁻¹ (r − μ) / C with μ, Σ the sample mean and covariance (numpy, float64)."""
    fit = gaussian_residuals(6, 7, seed=0)
    test = gaussian_residuals(2, 7, seed=1)
    m = Mahalanobis(MahalanobisConfig(ridge=0.01)).fit(fit)
    x = fit.permute(0, 2, 3, 1).reshape(-1, 7).double().numpy()
    mu = x.mean(0)
    cov = np.cov(x, rowvar=False)
    cov += 0.01 * np.trace(cov) / 7 * np.eye(7)
    t = test.permute(0, 2, 3, 1).double().numpy() - mu
    expected = np.einsum("bhwc,cd,bhwd->bhw", t, np.linalg.inv(cov), t) / 7
    np.testing.assert_allclose(m(test)[:, 0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_mahalanobis_is_about_one_on_normal_residuals_and_grows_with_their_spread():
    m = Mahalanobis().fit(gaussian_residuals(20, 6, seed=2))
    fresh = gaussian_residuals(20, 6, seed=2, draw=1)             # another sample of the same distribution
    assert abs(float(m(fresh).mean()) - 1.0) < 0.05
    centre = m.mean.view(1, -1, 1, 1)
    assert 90 < float(m(centre + 10 * (fresh - centre)).mean()) < 110     # 10× the spread: about 100


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 6))
def test_mahalanobis_ignores_how_channels_are_scaled_and_mixed(seed, c):
    """Without the ridge the distance is the same for residuals mixed by any invertible matrix: the largest or most
    correlated channels no longer decide it (the plain squared distance changes)."""
    fit = gaussian_residuals(4, c, seed=seed)
    test = gaussian_residuals(1, c, seed=seed, draw=1)
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.normal(size=(c, c)) + 3 * np.eye(c)).float()

    def mixed(r):
        return torch.einsum("dc,bchw->bdhw", a, r)

    plain = Mahalanobis(MahalanobisConfig(ridge=0.0)).fit(fit)
    moved = Mahalanobis(MahalanobisConfig(ridge=0.0)).fit(mixed(fit))
    torch.testing.assert_close(moved(mixed(test)), plain(test), rtol=2e-3, atol=2e-3)


def test_fit_from_batches_equals_fit_at_once():
    r = gaussian_residuals(6, 5, seed=4)
    whole = Mahalanobis().fit(r)
    parts = Mahalanobis().fit(r[i:i + 2] for i in range(0, 6, 2))       # a generator, as ALMRR passes it
    torch.testing.assert_close(parts.mean, whole.mean)
    torch.testing.assert_close(parts.whitener, whole.whitener, rtol=1e-4, atol=1e-5)


def test_state_round_trip_and_bad_states():
    r = gaussian_residuals(3, 4, seed=5)
    m = Mahalanobis().fit(r)
    loaded = Mahalanobis()
    loaded.load_state_dict(m.state_dict())
    torch.testing.assert_close(loaded(r), m(r))
    with pytest.raises(CheckpointError, match="missing key 'whitener'"):
        Mahalanobis().load_state_dict({"mean": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"expected 'mean' \(C,\) and 'whitener' \(C, C\)"):
        Mahalanobis().load_state_dict({"mean": torch.zeros(4), "whitener": torch.eye(3)})
    with pytest.raises(CheckpointError, match="finite"):
        Mahalanobis().load_state_dict({"mean": torch.full((2,), float("nan")), "whitener": torch.eye(2)})


def test_user_errors_are_one_clear_message():
    r = gaussian_residuals(2, 4, seed=6)
    with pytest.raises(NotFittedError, match="not fitted"):
        Mahalanobis()(r)
    m = Mahalanobis().fit(r)
    with pytest.raises(DataError, match="fitted on residuals of 4 channels, got 3"):
        m(r[:, :3])
    with pytest.raises(DataError, match="B×C×H×W"):
        m(r[0])
    bad = r.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        Mahalanobis().fit(bad)
    with pytest.raises(DataError, match="batch 1: 3 channels, the earlier batches had 4"):
        Mahalanobis().fit([r, r[:, :3]])
    with pytest.raises(DataError, match="at least 2"):
        Mahalanobis().fit([])
    with pytest.raises(DataError, match="singular"):
        Mahalanobis(MahalanobisConfig(ridge=0.0)).fit(torch.ones(2, 3, 4, 4))
    with pytest.raises(ConfigError, match="ridge"):
        build("distance", "mahalanobis", ridge=-1.0)


# ---- position_mahalanobis ------------------------------------------------------------------------------------

def _position_formula(fit: torch.Tensor, test: torch.Tensor, ridge: float, k: float) -> np.ndarray:
    """The per-position distance in numpy float64: each position's sample mean and covariance over the images,
    shrunk toward their mean over positions by k pseudo-images, plus ridge · tr(pooled)/C on the diagonal."""
    n, c, h, w = fit.shape
    x = fit.double().numpy().reshape(n, c, h * w)
    mu = x.mean(0)                                                     # C × P
    covs = np.stack([np.cov(x[:, :, p], rowvar=False) for p in range(h * w)])
    pooled = covs.mean(0)
    covs = ((n - 1) * covs + k * pooled) / (n - 1 + k) + ridge * np.trace(pooled) / c * np.eye(c)
    t = test.double().numpy().reshape(len(test), c, h * w) - mu
    out = np.einsum("bcp,pcd,bdp->bp", t, np.linalg.inv(covs), t) / c
    return out.reshape(len(test), 1, h, w)


@pytest.mark.parametrize("k", [0.0, 3.0])
def test_position_mahalanobis_matches_the_formula(k):
    fit = gaussian_residuals(12, 5, seed=2, size=3)
    test = gaussian_residuals(2, 5, seed=3, size=3)
    m = build("distance", "position_mahalanobis", ridge=0.01, shrinkage=k).fit(fit)
    np.testing.assert_allclose(m(test).double().numpy(), _position_formula(fit, test, 0.01, k), rtol=2e-4, atol=1e-5)
    assert m.needs_fit and m.wants_many_images and m.fitted


def test_position_mahalanobis_weighs_each_position_by_its_own_variation():
    """Normal residuals that vary 10× more at the left column than elsewhere: the same deviation is unremarkable
    there and stands out elsewhere, where the pooled Mahalanobis distance scores both alike."""
    g = torch.Generator().manual_seed(0)
    fit = torch.randn(200, 3, 2, 2, generator=g)
    fit[:, :, :, 0] *= 10
    probe = torch.zeros(1, 3, 2, 2)
    probe[..., 0, 0] = probe[..., 0, 1] = 5.0
    d = PositionMahalanobis(PositionMahalanobisConfig(shrinkage=0)).fit(fit)(probe)[0, 0]
    assert d[0, 1] > 20 * d[0, 0]
    pooled = Mahalanobis().fit(fit)(probe)[0, 0]
    assert abs(float(pooled[0, 1] - pooled[0, 0])) < 0.5


def test_position_mahalanobis_batches_channels_and_state():
    fit = gaussian_residuals(10, 6, seed=4, size=3)
    test = gaussian_residuals(3, 6, seed=5, size=3)
    once = PositionMahalanobis().fit(fit)
    batched = PositionMahalanobis().fit(iter([fit[:4], fit[4:7], fit[7:]]))
    torch.testing.assert_close(batched(test), once(test), rtol=1e-4, atol=1e-5)
    sub = PositionMahalanobis(PositionMahalanobisConfig(channels=4)).fit(fit)
    assert sub.mean.shape == (9, 4) and sub.keep is not None and len(set(sub.keep.tolist())) == 4
    for m in (once, sub):    # the state keeps the lower triangles only; a copy scores alike
        copy = PositionMahalanobis()
        copy.load_state_dict(m.state_dict())
        torch.testing.assert_close(copy(test), m(test))
    state = sub.state_dict()
    assert state["whitener_tril"].shape == (9, 4 * 5 // 2)
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        PositionMahalanobis().load_state_dict({**state, "grid": [2, 2]})
    with pytest.raises(CheckpointError, match="missing key 'keep'"):
        PositionMahalanobis().load_state_dict({k: v for k, v in state.items() if k != "keep"})


def test_position_mahalanobis_user_errors():
    fit = gaussian_residuals(4, 3, seed=6, size=4)
    with pytest.raises(NotFittedError, match="position_mahalanobis': not fitted"):
        PositionMahalanobis()(fit)
    with pytest.raises(DataError, match="at least 2 images, got 1"):
        PositionMahalanobis().fit(fit[:1])
    with pytest.raises(DataError, match="shape C×H×W = \\(3, 2, 2\\), the earlier batches had \\(3, 4, 4\\)"):
        PositionMahalanobis().fit([fit, fit[:, :, :2, :2]])
    m = PositionMahalanobis().fit(fit)
    with pytest.raises(DataError, match="3 channels on a 4×4 grid, got 3 on 2×2"):
        m(fit[:, :, :2, :2])
    bad = fit.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        PositionMahalanobis().fit(bad)
    # 176 channels at 64×64 positions need about 2.4 GB: refused under max_gb = 1, with a channel count that fits
    big = PositionMahalanobis(PositionMahalanobisConfig(max_gb=1.0))
    with pytest.raises(ConfigError, match=r"176 channels at 4096 positions need about 2\.4 GB.*'channels', e\.g\. 114"):
        big.fit(torch.zeros(2, 176, 64, 64))
    assert PositionMahalanobis(PositionMahalanobisConfig(max_gb=1.0, channels=100)).check_size(176, 4096) < 1.0
    with pytest.raises(ConfigError, match="shrinkage"):
        build("distance", "position_mahalanobis", shrinkage=-1)
