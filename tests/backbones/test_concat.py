"""concat_stages: shapes, identity at the target size, channel order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.backbones import concat_stages

sizes = st.integers(1, 12)


@settings(max_examples=25, deadline=None)
@given(chs=st.lists(st.integers(1, 5), min_size=1, max_size=4), hws=st.lists(st.tuples(sizes, sizes), min_size=4,
                                                                            max_size=4),
       out=st.one_of(sizes, st.tuples(sizes, sizes)), batch=st.integers(1, 3))
def test_shape_and_passthrough(chs, hws, out, batch):
    maps = [torch.randn(batch, c, *hw) for c, hw in zip(chs, hws, strict=False)]
    got = concat_stages(maps, out)
    oh, ow = (out, out) if isinstance(out, int) else out
    assert tuple(got.shape) == (batch, sum(chs), oh, ow)
    start = 0
    for m in maps:  # maps already at the target size come through unchanged, in order
        if tuple(m.shape[-2:]) == (oh, ow):
            assert torch.equal(got[:, start:start + m.shape[1]], m)
        start += m.shape[1]


@settings(max_examples=15, deadline=None)
@given(value=st.floats(-5, 5), h=sizes, w=sizes, out=sizes)
def test_constant_maps_stay_constant(value, h, w, out):
    got = concat_stages([torch.full((1, 2, h, w), value)], out)
    torch.testing.assert_close(got, torch.full((1, 2, out, out), value))


def test_almrr_feature_size():
    maps = [torch.zeros(1, 256, 64, 64), torch.zeros(1, 512, 32, 32), torch.zeros(1, 1024, 16, 16)]
    assert tuple(concat_stages(maps, 64).shape) == (1, 1792, 64, 64)


def test_matches_bilinear_interpolate():
    m = torch.randn(2, 3, 5, 7)
    want = torch.nn.functional.interpolate(m, size=(9, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(concat_stages([m], (9, 4)), want)


def test_bad_input():
    with pytest.raises(ValueError, match="no maps"):
        concat_stages([], 4)
    with pytest.raises(ValueError, match="B=2"):
        concat_stages([torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4)], 4)
    with pytest.raises(ValueError, match="size"):
        concat_stages([torch.zeros(1, 1, 4, 4)], 0)
