"""Feature distances (kind ``distance``): mse and the fitted Mahalanobis distance of the residual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import CheckpointError, ConfigError, DataError, build
from ssmad.scoring import Mahalanobis, MahalanobisConfig, MeanSquared, NotFittedError


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
