"""Post-processing and fusion components: box_max, gaussian, quantile_norm, weighted."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from ssmad.core import KINDS, CheckpointError, ConfigError, DataError, make_config
from ssmad.scoring import (
    BoxMax,
    BoxMaxConfig,
    Gaussian,
    GaussianConfig,
    NotFittedError,
    PositionNorm,
    PositionNormConfig,
    QuantileNorm,
    QuantileNormConfig,
    WeightedFusion,
    WeightedFusionConfig,
)


class _Registered:
    """This package's plugin hook called directly (no entry-point loading of the other packages)."""

    def __init__(self) -> None:
        import ssmad.scoring.plugin as plugin

        self.found: dict = {}
        plugin.ssmad_register(self._register)

    def _register(self, kind, name, factory, *, config=None, summary=None):
        assert kind in KINDS and summary
        self.found[(kind, name)] = (factory, config)

    def build(self, kind: str, name: str, **params):
        factory, config = self.found[(kind, name)]
        return factory() if config is None else factory(make_config(config, params, f"{kind} {name!r}"))


@pytest.fixture(scope="module")
def registry() -> _Registered:
    return _Registered()


def test_entry_point_is_declared():
    eps = [ep for ep in md.entry_points(group="ssmad") if ep.value == "ssmad.scoring.plugin"]
    assert eps and eps[0].dist.metadata["Name"] == "ssmad-scoring"


def test_components_build_from_the_registry(registry):
    assert isinstance(registry.build("score", "box_max", size=5), BoxMax)
    assert isinstance(registry.build("smooth", "gaussian", sigma=2), Gaussian)
    assert isinstance(registry.build("normaliser", "quantile_norm", q_low=0.5), QuantileNorm)
    assert isinstance(registry.build("normaliser", "position_norm", mode="zscore"), PositionNorm)
    assert registry.build("fusion", "weighted", weights=[1, 2, 3]).weights == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("kind, name, params, message", [
    ("score", "box_max", {"size": 8}, "odd"),
    ("score", "box_max", {"size": 0}, "> 0"),
    ("score", "box_max", {"sise": 9}, "unknown parameter 'sise'"),
    ("smooth", "gaussian", {"sigma": -1.0}, "'sigma' must be > 0"),
    ("normaliser", "quantile_norm", {"q_low": 0.99, "q_high": 0.9}, "'q_low' .* must be smaller"),
    ("normaliser", "quantile_norm", {"q_high": 1.5}, r"'q_high' must be in \[0.0, 1.0\]"),
    ("normaliser", "position_norm", {"mode": "median"}, "mode"),
    ("normaliser", "position_norm", {"sigma": -1.0}, "'sigma' must be in"),
    ("fusion", "weighted", {"weights": []}, "must not be empty"),
    ("fusion", "weighted", {"weights": "0.5"}, "must be a list of a number"),
])
def test_bad_parameters_are_config_errors(registry, kind, name, params, message):
    with pytest.raises(ConfigError, match=message):
        registry.build(kind, name, **params)


# ---- box_max --------------------------------------------------------------------------------------------

def _box_mean_reference(m: np.ndarray, k: int) -> np.ndarray:
    """Mean over the part of each centred k×k window that lies inside the image."""
    r = k // 2
    h, w = m.shape
    out = np.empty_like(m, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = m[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean()
    return out


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3, 5, 9, 15]),
       st.integers(0, 2**31 - 1))
def test_box_max_matches_reference(b, h, w, size, seed):
    maps = np.random.default_rng(seed).random((b, 1, h, w))
    box = BoxMax(BoxMaxConfig(size=size))
    smooth = box.smooth(maps)
    ref = np.stack([_box_mean_reference(maps[i, 0], size) for i in range(b)])[:, None]
    np.testing.assert_allclose(smooth, ref, rtol=1e-12, atol=1e-12)
    scores = box(maps)
    assert isinstance(scores, np.ndarray) and scores.shape == (b,)
    np.testing.assert_allclose(scores, ref.reshape(b, -1).max(axis=1), rtol=1e-12)


def test_box_max_torch_in_torch_out_and_bhw():
    t = torch.zeros(2, 1, 20, 20)
    t[0, 0, 10, 10] = 81.0
    t[1, 0, 0, 0] = 81.0  # in a corner the clipped 5×5 window averages 25 pixels, not 81
    scores = BoxMax()(t)
    assert isinstance(scores, torch.Tensor) and scores.shape == (2,)
    assert scores.tolist() == pytest.approx([1.0, 81.0 / 25.0])
    assert torch.equal(BoxMax()(t[:, 0]), scores)
    with pytest.raises(DataError, match="B×1×H×W"):
        BoxMax()(torch.zeros(2, 3, 8, 8))


# ---- gaussian -------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(st.integers(2, 20), st.integers(2, 20), st.floats(0.3, 6.0), st.sampled_from([2.0, 4.0]),
       st.integers(0, 2**31 - 1))
def test_gaussian_matches_scipy(h, w, sigma, truncate, seed):
    maps = np.random.default_rng(seed).random((2, 1, h, w))
    got = Gaussian(GaussianConfig(sigma=sigma, truncate=truncate))(maps)
    assert got.shape == maps.shape
    for i in range(2):
        ref = ndimage.gaussian_filter(maps[i, 0], sigma, mode="reflect", truncate=truncate)
        np.testing.assert_allclose(got[i, 0], ref, rtol=1e-10, atol=1e-12)


def test_gaussian_keeps_torch_dtype_and_shape():
    t = torch.rand(3, 16, 16)
    out = Gaussian(GaussianConfig(sigma=1.5))(t)
    assert isinstance(out, torch.Tensor) and out.shape == t.shape and out.dtype == torch.float32
    assert out.sum().item() == pytest.approx(t.sum().item(), rel=1e-2)  # smoothing keeps the mass roughly
    tiny = Gaussian(GaussianConfig(sigma=0.1))  # radius 0: identity
    assert torch.equal(tiny(t), t)


# ---- quantile_norm --------------------------------------------------------------------------------------

def test_quantile_norm_fit_apply_and_state():
    maps = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    qn = QuantileNorm()
    assert qn.fit(maps) is qn
    lo, hi = np.quantile(maps.numpy().astype(np.float64), [0.9, 0.995])
    assert qn.state_dict() == pytest.approx({"q_low_value": lo, "q_high_value": hi})
    out = qn(maps)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, (maps - lo) / (hi - lo))
    # the normalised quantiles land on 0 and 1
    assert np.quantile(out.numpy(), 0.9) == pytest.approx(0.0, abs=1e-5)
    assert np.quantile(out.numpy(), 0.995) == pytest.approx(1.0, abs=1e-4)
    other = QuantileNorm()
    other.load_state_dict(qn.state_dict())
    np.testing.assert_allclose(other(maps.numpy()), out.numpy(), rtol=1e-6)


def test_quantile_norm_batches_and_subsampling():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(3, 1, 40, 40)).astype(np.float32) for _ in range(5)]
    full = QuantileNorm().fit(batches).state_dict()
    assert full == QuantileNorm().fit(iter(batches)).state_dict()
    small = QuantileNormConfig(max_samples=6000, seed=3)
    a = QuantileNorm(small).fit(batches).state_dict()
    b = QuantileNorm(small).fit(batches).state_dict()
    assert a == b  # seeded
    assert a["q_low_value"] == pytest.approx(full["q_low_value"], abs=0.1)


def test_quantile_norm_errors_and_degenerate_maps():
    qn = QuantileNorm()
    with pytest.raises(NotFittedError, match="not fitted"):
        qn(np.zeros((1, 1, 4, 4)))
    with pytest.raises(NotFittedError):
        qn.state_dict()
    with pytest.raises(DataError, match="no map values"):
        qn.fit([])
    with pytest.raises(DataError, match="NaN"):
        qn.fit(np.full((1, 1, 2, 2), np.nan))
    with pytest.raises(CheckpointError, match="missing key 'q_high_value'"):
        qn.load_state_dict({"q_low_value": 0.0})
    with pytest.raises(CheckpointError, match="q_high_value 1.0 < q_low_value 2.0"):
        qn.load_state_dict({"q_low_value": 2.0, "q_high_value": 1.0})
    with pytest.warns(RuntimeWarning, match="constant"):
        qn.fit(np.full((2, 1, 4, 4), 3.0))
    out = qn(np.full((1, 1, 2, 2), 5.0))
    assert np.isfinite(out).all() and out.max() == pytest.approx(2.0)


# ---- weighted fusion ------------------------------------------------------------------------------------

# ---- position_norm ---------------------------------------------------------------------------------------

def test_position_norm_removes_what_every_normal_map_shows():
    """A bright border common to all normal maps no longer decides the image score; a local defect does."""
    rng = np.random.default_rng(0)
    border = np.zeros((16, 16), np.float32)
    border[:2] = border[-2:] = border[:, :2] = border[:, -2:] = 5.0
    normal = border + rng.normal(0, 0.1, (20, 16, 16)).astype(np.float32)
    test = border + rng.normal(0, 0.1, (2, 16, 16)).astype(np.float32)
    test[1, 7:9, 7:9] += 2.0                                     # a defect, weaker than the border
    assert test[0].max() > test[1, 7:9, 7:9].max()               # raw maxima: both images score on the border
    for mode in ("subtract", "zscore"):
        norm = PositionNorm(PositionNormConfig(mode=mode, sigma=0)).fit(normal)
        out = norm(test)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == test.shape
        assert out[1].max() > 3 * out[0].max()                    # now only the defect stands out
        np.testing.assert_allclose(norm(normal).mean(0), 0, atol=1e-5)


def test_position_norm_torch_resizes_smooths_and_round_trips():
    normal = torch.rand(8, 1, 16, 16, dtype=torch.float64)
    norm = PositionNorm(PositionNormConfig(mode="zscore", sigma=1.0)).fit(normal)
    big = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    out = norm(big)
    assert out.shape == big.shape and out.dtype == torch.float64
    ref = Gaussian(GaussianConfig(sigma=1.0))(normal[:, 0].mean(0)[None, None].float())[0, 0]
    torch.testing.assert_close(norm.mean, ref, rtol=1e-5, atol=1e-6)
    again = PositionNorm(PositionNormConfig(mode="zscore", sigma=1.0))
    again.load_state_dict(norm.state_dict())
    torch.testing.assert_close(again(big), out)


def test_position_norm_errors():
    norm = PositionNorm(PositionNormConfig(mode="zscore"))
    with pytest.raises(NotFittedError, match="position_norm: not fitted"):
        norm(np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="at least 2 normal maps"):
        norm.fit(np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="NaN"):
        norm.fit(np.full((3, 4, 4), np.nan))
    with pytest.raises(CheckpointError, match="missing key 'std'"):
        norm.load_state_dict({"mean": torch.zeros(4, 4)})
    with pytest.raises(CheckpointError, match="H×W map"):
        norm.load_state_dict({"mean": torch.zeros(4), "std": torch.zeros(4)})


def test_weighted_fusion_numpy_and_torch():
    a = np.ones((2, 1, 3, 3), dtype=np.float32)
    b = np.full((2, 1, 3, 3), 3.0, dtype=np.float32)
    fuse = WeightedFusion(WeightedFusionConfig(weights=(0.25, 0.5)))
    out = fuse([a, b])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.75)
    t = fuse([torch.from_numpy(a), torch.from_numpy(b)])
    assert isinstance(t, torch.Tensor)
    torch.testing.assert_close(t, torch.full((2, 1, 3, 3), 1.75))
    with pytest.raises(ConfigError, match="got 3 maps but 2 weights"):
        fuse([a, b, b])
    with pytest.raises(DataError, match="share one shape"):
        fuse([a, b[:1]])
