"""The ``perlin`` synthesiser: mask/blend invariants (hypothesis), clean fraction, layouts, textures, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssmad.core import ConfigError, DataError, build
from ssmad.synth import AUGMENTATIONS, PerlinConfig, PerlinSynth, SynthSample, augment_texture, perlin_noise
from ssmad.synth.noise import perlin_mask

DTD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dtd"


def _image(seed: int, h: int, w: int, gray: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if gray else (h, w, 3)
    return rng.random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def synth() -> PerlinSynth:
    return build("synth", "perlin")


@pytest.fixture(scope="module")
def texture_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(7)
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / "a" / "t1.png")
    Image.fromarray((rng.random((30, 18)) * 255).astype(np.uint8)).save(root / "a" / "b" / "t2.jpg")
    Image.fromarray((rng.random((12, 12)) * 65535).astype(np.uint16)).save(root / "t3.tif")
    (root / "notes.txt").write_text("not an image")
    return root


# ---- invariants ------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(5, 40), w=st.integers(5, 40), gray=st.booleans())
def test_blend_invariants(synth, seed, h, w, gray):
    image = _image(seed, h, w, gray)
    s = synth.sample(image, np.random.default_rng(seed))
    assert isinstance(s, SynthSample)
    for a in (s.clean, s.anomalous):
        assert a.shape == image.shape and a.dtype == np.float32
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert s.mask.shape == (h, w) and s.mask.dtype == np.float32
    assert set(np.unique(s.mask)) <= {0.0, 1.0}
    if s.angle is None:
        np.testing.assert_array_equal(s.clean, image)
    m = s.mask > 0
    if image.ndim == 3:
        m = np.repeat(m[..., None], 3, axis=2)
    np.testing.assert_array_equal(s.anomalous[~m], s.clean[~m])  # untouched outside the mask
    if s.is_anomalous:
        lo, hi = synth.cfg.opacity_range
        assert lo <= s.alpha <= hi
        assert s.texture is not None and s.texture.shape == image.shape
        assert len(s.augmentations) == synth.cfg.n_augment
        expected = (1.0 - s.alpha) * s.clean[m] + s.alpha * s.texture[m]  # one α for the whole sample
        np.testing.assert_allclose(s.anomalous[m], expected, atol=1e-6)
    else:
        assert s.alpha == 0.0 and s.texture is None
        np.testing.assert_array_equal(s.anomalous, s.clean)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(3, 70), w=st.integers(3, 70))
def test_perlin_noise_any_size(seed, h, w):
    rng = np.random.default_rng(seed)
    res = (2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)))
    n = perlin_noise((h, w), res, rng)
    assert n.shape == (h, w) and n.dtype == np.float32
    assert np.isfinite(n).all() and np.abs(n).max() <= 1.0 + 1e-5
    assert n[0, 0] == pytest.approx(0.0, abs=1e-6)  # gradient noise vanishes on lattice nodes


def test_perlin_noise_matches_when_grid_divides():
    # on a canvas the lattice divides, generation at the padded size then cropping is the same field
    a = perlin_noise((32, 32), (4, 8), np.random.default_rng(5))
    b = perlin_noise((30, 27), (4, 8), np.random.default_rng(5))
    assert a.shape == (32, 32) and b.shape == (30, 27)
    np.testing.assert_array_equal(b, a[:30, :27])
    assert np.abs(a).max() > 0.1  # not degenerate


def test_mask_threshold_and_scales():
    rng = np.random.default_rng(0)
    fractions = [perlin_mask((64, 64), rng, max_exp=5).mean() for _ in range(40)]
    assert 0.0 < np.mean(fractions) < 0.5
    coarse = perlin_mask((64, 64), np.random.default_rng(1), min_exp=0, max_exp=0, threshold=-2.0, max_angle=0.0)
    assert coarse.all()  # threshold below the noise range: everything in the mask


def test_clean_fraction_near_p_clean(synth):
    image = _image(0, 12, 12, False)
    rng = np.random.default_rng(123)
    n = 300
    clean = sum(not synth.sample(image, rng).is_anomalous for _ in range(n))
    p = synth.cfg.p_clean
    assert abs(clean - n * p) <= 4 * math.sqrt(n * p * (1 - p))  # binomial, 4 standard deviations


@pytest.mark.parametrize("p_clean", [0.0, 1.0])
def test_p_clean_extremes(p_clean):
    s = build("synth", "perlin", p_clean=p_clean, p_rotate=0.0)
    rng = np.random.default_rng(9)
    image = _image(1, 16, 20, False)
    flags = [s.sample(image, rng).is_anomalous for _ in range(20)]
    assert all(flags) if p_clean == 0.0 else not any(flags)  # empty masks are redrawn, never returned


def test_rotation_of_clean_image():
    image = _image(2, 24, 24, False)
    never = build("synth", "perlin", p_rotate=0.0)
    always = build("synth", "perlin", p_rotate=1.0, p_clean=1.0)
    s0 = never.sample(image, np.random.default_rng(0))
    s1 = always.sample(image, np.random.default_rng(0))
    assert s0.angle is None and np.array_equal(s0.clean, image)
    assert s1.angle is not None and -90 <= s1.angle <= 90
    assert not np.array_equal(s1.clean, image) and s1.clean.shape == image.shape
    np.testing.assert_array_equal(s1.anomalous, s1.clean)


@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 3), (17, 23, 1)])
def test_reproducible_and_layouts(synth, shape):
    image = np.random.default_rng(4).random(shape, dtype=np.float32)
    runs = [synth(image, np.random.default_rng(42)) for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    clean, anomalous, mask = runs[0]
    assert clean.shape == shape and anomalous.shape == shape and mask.shape == shape[:2]
    other = synth(image, np.random.default_rng(43))
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], other)) or not mask.any()


def test_gray_texture_is_gray(synth):
    s = None
    rng = np.random.default_rng(11)
    while s is None or not s.is_anomalous:
        s = synth.sample(_image(3, 16, 16, True), rng)
    assert s.texture.shape == (16, 16)


# ---- textures --------------------------------------------------------------------------------------------

def test_texture_folder(texture_dir):
    s = build("synth", "perlin", texture_dir=str(texture_dir), p_clean=0.0)
    assert len(s.textures) == 3  # nested folders, .tif included, .txt ignored
    names = set()
    rng = np.random.default_rng(0)
    for _ in range(12):
        out = s.sample(_image(5, 16, 16, False), rng)
        names.add(Path(out.texture_name).name)
        assert out.texture.shape == (16, 16, 3)
    assert names <= {"t1.png", "t2.jpg", "t3.tif"} and len(names) >= 2


def test_texture_errors(tmp_path, texture_dir):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope"):
        build("synth", "perlin", texture_dir=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError, match="empty"):
        build("synth", "perlin", texture_dir=str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    s = build("synth", "perlin", texture_dir=str(bad), p_clean=0.0)
    with pytest.raises(DataError, match="broken.png"):
        s(_image(0, 8, 8, False), np.random.default_rng(0))


@pytest.mark.skipif(not DTD.is_dir(), reason="shared DTD textures not available")
def test_dtd_textures():
    s = build("synth", "perlin", texture_dir=str(DTD), p_clean=0.0)
    assert len(s.textures) >= 100
    out = s.sample(_image(0, 32, 32, False), np.random.default_rng(0))
    assert out.is_anomalous and str(DTD) in out.texture_name


def test_augmentations_keep_shape_and_dtype():
    rng = np.random.default_rng(0)
    img = (rng.random((19, 13, 3)) * 255).astype(np.uint8)
    for name, fn in AUGMENTATIONS.items():
        out = fn(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8, name
    out, names = augment_texture(img, rng, n=3)
    assert len(set(names)) == 3 and out.shape == img.shape
    assert not np.array_equal(out, img)


# ---- config ----------------------------------------------------------------------------------------------

def test_config_validation():
    with pytest.raises(ConfigError, match="opacity_range"):
        build("synth", "perlin", opacity_range=(0.8, 0.2))
    with pytest.raises(ConfigError, match="p_clean"):
        build("synth", "perlin", p_clean=1.5)
    with pytest.raises(ConfigError, match="perlin_scale_max_exp"):
        build("synth", "perlin", perlin_scale_min_exp=3, perlin_scale_max_exp=2)
    with pytest.raises(ConfigError, match="rotate_fill"):
        build("synth", "perlin", rotate_fill="smear")
    assert PerlinConfig().perlin_scale_max_exp == 5 and PerlinConfig().threshold == 0.5


def test_bad_image():
    s = PerlinSynth()
    with pytest.raises(ValueError, match="shape"):
        s(np.zeros((4, 4, 2), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dtype"):
        s(np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0))
