"""Mixture density head: shapes, exact NLL, the σ-floor bound, the blind spot and the non-collapse proof."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import ConfigError, build
from ssmad.heads import MixtureDensityHead

C, R = 16, 2  # feature width, intrinsic dimension of the normal data


def auroc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    neg, pos = neg.flatten()[:, None], pos.flatten()[None, :]
    return ((pos > neg).float().mean() + 0.5 * (pos == neg).float().mean()).item()


class Cluster:
    """Normal features: a 2-D Gaussian cluster embedded in 16 dims plus small isotropic noise."""

    def __init__(self, seed: int = 1, noise: float = 0.05) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.basis = torch.linalg.qr(torch.randn(C, R, generator=self.g))[0]  # C×R orthonormal
        self.centre = 0.5 * torch.randn(C, generator=self.g)
        self.noise = noise

    def sample(self, b: int, h: int, w: int, smooth: bool = False) -> torch.Tensor:
        # smooth=True: one latent per map (every position agrees with its neighbours), for the blind-spot context
        z = torch.randn(b, R, 1, 1, generator=self.g).expand(b, R, h, w) if smooth else \
            torch.randn(b, R, h, w, generator=self.g)
        x = torch.einsum("cr,brhw->bchw", self.basis, z) + self.centre.view(1, C, 1, 1)
        return (x + self.noise * torch.randn(b, C, h, w, generator=self.g)).contiguous()

    def off_subspace(self, x: torch.Tensor, size: float = 1.5) -> torch.Tensor:
        """``x`` moved by ``size`` in a random direction orthogonal to the normal subspace."""
        v = torch.randn(x.shape, generator=self.g)
        v = v - torch.einsum("cr,dr,bdhw->bchw", self.basis, self.basis, v)
        return x + size * v / v.norm(dim=1, keepdim=True)


def train(head: MixtureDensityHead, data, steps: int = 200, lr: float = 3e-3) -> float:
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = head.nll(data()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    return loss.item()


def test_shapes_and_parameter_constraints():
    torch.manual_seed(0)
    for context in ("self", "neighbours"):
        head = build("head", "mdn", in_channels=6, n_components=3, hidden=8, bottleneck=4, context=context)
        t = torch.randn(2, 6, 5, 7)
        log_pi, mu, sigma = head(t)
        assert log_pi.shape == (2, 3, 5, 7) and mu.shape == (2, 3, 6, 5, 7) and sigma.shape == (2, 3, 5, 7)
        torch.testing.assert_close(log_pi.logsumexp(dim=1), torch.zeros(2, 5, 7), atol=1e-5, rtol=0)
        assert (sigma >= head.sigma_min).all()
        nll = head.nll(t)
        assert nll.shape == (2, 5, 7) and torch.isfinite(nll).all()
        torch.testing.assert_close(head.nll(t, (log_pi, mu, sigma)), nll)
    with pytest.raises(ConfigError, match="6"):
        head(torch.randn(1, 5, 4, 4))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for context in ("self", "neighbours"):
        head = MixtureDensityHead(6, n_components=2, hidden=8, bottleneck=3, context=context)
        t = torch.randn(2, 6, 4, 4, requires_grad=True)
        head.nll(t).mean().backward()
        for name, p in head.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        assert t.grad is not None and t.grad.abs().sum() > 0


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 6), k=st.integers(1, 4), scale=st.floats(0.01, 100.0), seed=st.integers(0, 2**16),
       sigma_min=st.floats(1e-3, 1.0))
def test_nll_matches_torch_distributions_and_respects_the_floor(c, k, scale, seed, sigma_min):
    torch.manual_seed(seed)
    head = MixtureDensityHead(c, n_components=k, hidden=8, bottleneck=3, sigma_min=sigma_min).double()
    t = scale * torch.randn(2, c, 3, 2, dtype=torch.float64)
    log_pi, mu, sigma = head(t)
    nll = head.nll(t, (log_pi.double(), mu.double(), sigma.double()))
    # oracle: torch.distributions mixture of isotropic Gaussians, one position at a time
    lp = log_pi.permute(0, 2, 3, 1)  # B×h×w×K
    m = mu.permute(0, 3, 4, 1, 2)  # B×h×w×K×C
    s = sigma.permute(0, 2, 3, 1)[..., None].expand_as(m)
    comp = torch.distributions.Independent(torch.distributions.Normal(m, s), 1)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=lp), comp)
    expected = -mix.log_prob(t.permute(0, 2, 3, 1)) / c
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-5)
    bound = 0.5 * math.log(2 * math.pi) + math.log(sigma_min)
    assert head.nll_lower_bound() == pytest.approx(bound)
    assert (nll >= bound - 1e-6).all()


def test_nll_is_stable_for_far_outliers():
    torch.manual_seed(0)
    head = MixtureDensityHead(4, n_components=3, hidden=8, bottleneck=2)
    log_pi, mu, sigma = head(torch.zeros(1, 4, 2, 2))
    far = torch.full((1, 4, 2, 2), 1e4)
    nll = head.nll(far, (log_pi, mu, sigma))  # fixed parameters: the log-sum-exp must not overflow
    assert torch.isfinite(nll).all() and (nll > 1e4).all()
    assert torch.isfinite(head.nll(far)).all() and torch.isfinite(head.nll(-far)).all()


def test_blind_spot_never_sees_its_own_position():
    torch.manual_seed(0)
    head = MixtureDensityHead(3, n_components=2, hidden=8, bottleneck=4, context="neighbours")
    # train a little so the masked tap would have moved if it were not masked
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        head.nll(torch.randn(2, 3, 5, 5)).mean().backward()
        opt.step()
    t = torch.randn(1, 3, 5, 5, requires_grad=True)
    log_pi, mu, sigma = head(t)
    for i in range(5):
        for j in range(5):
            out = log_pi[0, :, i, j].sum() + mu[0, :, :, i, j].sum() + sigma[0, :, i, j].sum()
            (grad,) = torch.autograd.grad(out, t, retain_graph=True)
            assert grad[0, :, i, j].abs().max() == 0, (i, j)  # own feature never enters (borders included)
            ring = torch.zeros(5, 5, dtype=torch.bool)
            ring[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] = True
            assert grad[0][:, ring].abs().sum() > 0  # but the neighbours do
            assert grad[0][:, ~ring].abs().max() == 0  # and nothing beyond the 3×3 ring (reflect padding included)
    # "self" context does see its own position
    own = MixtureDensityHead(3, n_components=2, hidden=8, bottleneck=4, context="self")
    t = torch.randn(1, 3, 4, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(own(t)[1][0, :, :, 1, 2].sum(), t)
    assert grad[0, :, 1, 2].abs().sum() > 0 and grad[0].abs().sum() == grad[0, :, 1, 2].abs().sum()


def test_self_context_does_not_collapse_to_identity():
    """(a) in-distribution features score clearly lower than off-distribution ones; (b) the σ floor bounds it."""
    data = Cluster()
    torch.manual_seed(0)
    head = MixtureDensityHead(C, n_components=3, hidden=32, bottleneck=4, sigma_min=0.05, context="self")
    train(head, lambda: data.sample(8, 6, 6))
    with torch.no_grad():
        normal = data.sample(32, 6, 6)
        nll_in = head.nll(normal)
        nll_off = head.nll(data.off_subspace(normal))  # normal features pushed off the learnt subspace
        nll_random = head.nll(torch.randn(32, C, 6, 6, generator=data.g))  # full-rank random features
    # an identity-collapsed density (μ = t, σ → 0) would give every input the same score
    assert auroc(nll_in, nll_off) > 0.97
    assert auroc(nll_in, nll_random) > 0.97
    assert nll_off.mean() - nll_in.mean() > 1.5 and nll_random.mean() - nll_in.mean() > 1.5
    bound = head.nll_lower_bound()
    assert min(nll_in.min(), nll_off.min(), nll_random.min()) >= bound


def test_sigma_floor_bounds_the_nll_on_noiseless_data():
    """(b) On exactly low-rank data an unfloored density could shrink σ to 0 (NLL → -∞); the floor stops it."""
    data = Cluster(seed=3, noise=0.0)
    torch.manual_seed(0)
    head = MixtureDensityHead(C, n_components=2, hidden=32, bottleneck=4, sigma_min=0.05, context="self")
    loss = train(head, lambda: data.sample(8, 6, 6), steps=150, lr=1e-2)
    bound = head.nll_lower_bound()
    with torch.no_grad():
        nll = head.nll(data.sample(32, 6, 6))
        _, _, sigma = head(data.sample(4, 6, 6))
    assert torch.isfinite(nll).all()
    assert nll.min() >= bound and loss >= bound
    assert loss < bound + 1.0  # it does get close to the floor: the bound is the binding constraint
    assert sigma.min() >= head.sigma_min


def test_neighbours_context_does_not_collapse_and_flags_local_anomalies():
    """(c) Blind-spot context: a feature that disagrees with its neighbours scores high; random maps too."""
    data = Cluster(seed=2)
    torch.manual_seed(0)
    head = MixtureDensityHead(C, n_components=3, hidden=32, bottleneck=4, sigma_min=0.05, context="neighbours")
    train(head, lambda: data.sample(8, 6, 6, smooth=True), steps=250)
    with torch.no_grad():
        normal = data.sample(32, 6, 6, smooth=True)
        defect = normal.clone()
        defect[:, :, 2:4, 2:4] = data.off_subspace(normal)[:, :, 2:4, 2:4]  # a 2×2 defect in a normal context
        nll_in = head.nll(normal)
        nll_defect = head.nll(defect)[:, 2:4, 2:4]
        nll_random = head.nll(torch.randn(32, C, 6, 6, generator=data.g))
    assert auroc(nll_in, nll_defect) > 0.95
    assert auroc(nll_in, nll_random) > 0.95
    assert nll_defect.mean() - nll_in.mean() > 1.0
    assert min(nll_in.min(), nll_defect.min(), nll_random.min()) >= head.nll_lower_bound()


def test_a_position_embedding_learns_what_differs_from_place_to_place():
    """Normal features centred differently at each of 4×4 positions: with ``position`` the head ranks a feature
    that is normal elsewhere but not here as anomalous; without it, it cannot tell."""
    torch.manual_seed(0)
    grid, c = 4, 6
    centres = torch.randn(c, grid, grid) * 3

    def normal(n):
        return centres + 0.1 * torch.randn(n, c, grid, grid)

    def misplaced(n):   # each position gets the centre of another position
        return torch.roll(centres, 1, dims=2) + 0.1 * torch.randn(n, c, grid, grid)

    gaps = {}
    for position in (False, True):
        torch.manual_seed(1)
        head = build("head", "mdn", in_channels=c, n_components=2, hidden=32, bottleneck=8, position=position,
                     grid=grid)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(120):
            loss = head.nll(normal(8)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            gaps[position] = float(head.nll(misplaced(8)).mean() - head.nll(normal(8)).mean())
    assert gaps[True] > 5 * max(gaps[False], 0.1), gaps
    with pytest.raises(ConfigError, match="position"):
        build("head", "mdn", in_channels=c, position=True)
    head = build("head", "mdn", in_channels=c, position=True, grid=grid)
    with pytest.raises(ConfigError, match="4×4"):
        head(torch.randn(1, c, 5, 5))
