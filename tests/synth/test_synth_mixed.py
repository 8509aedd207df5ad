"""The ``mixed`` synthesiser and the structural defects: an anomaly changes the image only inside its mask, every
family is drawn at its weight, a one-family mix is that family, the ``perlin`` family is ``perlin`` draw for draw,
and bad parameters are one ConfigError naming them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import ConfigError, build
from ssmad.synth import DEFECTS, FAMILIES


def _image(seed: int, h: int, w: int, gray: bool = False) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w) if gray else (h, w, 3), dtype=np.float32)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(24, 72), w=st.integers(24, 72),
       name=st.sampled_from(sorted(DEFECTS)))
def test_a_defect_changes_the_image_only_inside_its_mask(seed, h, w, name):
    img = _image(seed, h, w)
    out, mask = DEFECTS[name](img, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.float32 and mask.shape == (h, w) and mask.dtype == bool
    assert np.array_equal(out[~mask], img[~mask])
    assert 0.0 <= out.min() and out.max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(24, 64), w=st.integers(24, 64), gray=st.booleans())
def test_a_mixed_anomaly_keeps_the_layout_and_differs_from_clean_only_inside_its_mask(seed, h, w, gray):
    synth = build("synth", "mixed", p_clean=0.0, p_rotate=0.3)
    s = synth.sample(_image(seed, h, w, gray), np.random.default_rng(seed))
    assert s.clean.shape == s.anomalous.shape == ((h, w) if gray else (h, w, 3))
    outside = s.mask == 0
    assert np.array_equal(s.anomalous[outside], s.clean[outside])
    assert s.is_anomalous or s.alpha == 0.0


def test_every_family_is_drawn_at_its_weight():
    weights = [4, 1, 1, 1, 1, 0]
    synth = build("synth", "mixed", families=list(FAMILIES), weights=weights, p_clean=0.0, p_rotate=0.0)
    img, rng, counts = _image(0, 32, 32), np.random.default_rng(0), dict.fromkeys(FAMILIES, 0)
    for _ in range(400):
        s = synth.sample(img, rng)
        counts[s.augmentations[0] if s.alpha == 1.0 and s.texture is None else "perlin"] += 1
    assert counts[FAMILIES[-1]] == 0
    for family, w in zip(FAMILIES[:-1], weights):
        assert abs(counts[family] / 400 - w / 8) < 0.07, counts


def test_a_perlin_only_mix_is_the_perlin_synthesiser_draw_for_draw():
    mixed, perlin = build("synth", "mixed", families=["perlin"]), build("synth", "perlin")
    img = _image(3, 40, 48)
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(20):
        for a, b in zip(mixed(img, r1), perlin(img, r2)):
            assert np.array_equal(a, b)


def test_same_generator_state_gives_the_same_draws():
    synth, img = build("synth", "mixed"), _image(1, 40, 40)
    a = [synth(img, np.random.default_rng(4)) for _ in range(2)]
    for x, y in zip(*a):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("params, key", [({"families": ["perlin", "blur"]}, "families"),
                                         ({"families": []}, "families"),
                                         ({"families": ["hole", "hole"]}, "families"),
                                         ({"families": ["hole", "dent"], "weights": [1]}, "weights"),
                                         ({"families": ["hole", "dent"], "weights": [0, 0]}, "weights"),
                                         ({"weights": [-1, 1, 1, 1, 1, 1]}, "weights")])
def test_bad_parameters_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key):
        build("synth", "mixed", **params)
