"""apps/almrr/fusion.py: the invariants of the two fusion rules, on any maps."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from apps.almrr.fusion import FUSIONS, describe, fuse

maps = arrays("float32", (2, 1, 3, 4), elements=st.floats(-10, 10, width=32))
weights = st.floats(0, 10)


@settings(max_examples=60, deadline=None)
@given(maps, maps, weights)
def test_max_is_never_below_either_part(refined, scaled, w):
    r, d = torch.from_numpy(refined), torch.from_numpy(scaled)
    fused = fuse(r, d, "max", w)
    assert fused.shape == r.shape
    assert (fused >= r).all() and (fused >= w * d).all()
    assert ((fused == r) | (fused == w * d)).all()


@settings(max_examples=60, deadline=None)
@given(maps, maps, weights, weights)
def test_both_rules_are_monotone_in_the_weight_where_the_distance_is_positive(refined, scaled, w1, w2):
    r, d = torch.from_numpy(refined), torch.from_numpy(scaled).abs()
    lo, hi = sorted((w1, w2))
    for rule in FUSIONS:
        assert (fuse(r, d, rule, hi) >= fuse(r, d, rule, lo) - 1e-4).all()


@settings(max_examples=30, deadline=None)
@given(maps, maps)
def test_weight_zero_leaves_the_refined_map(refined, scaled):
    r, d = torch.from_numpy(refined).abs(), torch.from_numpy(scaled)
    torch.testing.assert_close(fuse(r, d, "sum", 0.0), r)
    torch.testing.assert_close(fuse(r, d, "max", 0.0), r)     # a probability map is >= 0


def test_an_unknown_rule_is_refused_and_rules_describe_themselves():
    with pytest.raises(ValueError, match="fusion rule 'mean'"):
        fuse(torch.zeros(1), torch.zeros(1), "mean", 1.0)
    assert describe("sum", 0.5) == "refined + 0.5 x scaled distance"
    assert describe("max", 1.0, "mahalanobis distance") == "max(refined, 1 x scaled mahalanobis distance)"
