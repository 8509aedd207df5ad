"""Perlin-mask texture blending (DRAEM / ALMRR anomaly synthesis, ALMRR eq. 1).

    I_a = M̄ ⊙ I + (1 − α)(M ⊙ I) + α (M ⊙ A)

``M`` a thresholded, rotated Perlin-noise mask, ``A`` an augmented texture image, ``α`` the texture weight
(opacity) drawn once per sample in ``opacity_range``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
from scipy import ndimage

from ssmad.core import configclass, field, in_range, non_negative, path_field

from .augment import AUGMENTATIONS, augment_texture
from .noise import perlin_mask
from .textures import TextureSource


def _range01(inst, attribute, value):
    lo, hi = value
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"parameter {attribute.name!r} must be (low, high) with 0 <= low <= high <= 1, got {value!r}")


def _check_exps(inst, attribute, value):
    if value < inst.perlin_scale_min_exp:
        raise ValueError(f"parameter {attribute.name!r} must be >= perlin_scale_min_exp "
                         f"({inst.perlin_scale_min_exp}), got {value!r}")
    if value > 10:
        raise ValueError(f"parameter {attribute.name!r} must be <= 10 (lattice of 1024 cells), got {value!r}")


def _check_augment_count(inst, attribute, value):
    if not 0 <= value <= len(AUGMENTATIONS):
        raise ValueError(f"parameter {attribute.name!r} must be in [0, {len(AUGMENTATIONS)}], got {value!r}")


@configclass
class PerlinConfig:
    """Parameters of the ``perlin`` synthesiser (defaults: ALMRR/DRAEM public code)."""

    texture_dir: str | None = path_field(default=None)  # texture images' folder tree (DTD); None: skimage pictures
    p_clean: float = field(default=0.5, validator=in_range(0.0, 1.0))       # samples left without anomaly
    p_rotate: float = field(default=0.3, validator=in_range(0.0, 1.0))      # clean image rotated first
    opacity_range: tuple[float, float] = field(default=(0.2, 1.0), validator=_range01)  # texture weight α
    perlin_scale_min_exp: int = field(default=0, validator=non_negative)
    perlin_scale_max_exp: int = field(default=5, validator=_check_exps)  # scales 2^min..2^max per axis
    threshold: float = 0.5                  # M = noise > threshold
    noise_rotation: float = field(default=90.0, validator=in_range(0.0, 180.0))  # noise rotated U(-x, x)°
    image_rotation: float = field(default=90.0, validator=in_range(0.0, 180.0))  # clean image U(-x, x)°
    rotate_fill: Literal["reflect", "constant", "nearest", "wrap"] = "reflect"  # border of the rotated image
    n_augment: int = field(default=3, validator=_check_augment_count)  # texture augmentations per sample
    max_retries: int = field(default=20, validator=non_negative)  # redraws of an empty mask
    cache_size: int = field(default=64, validator=non_negative)   # resized textures kept in memory


@attrs.define(kw_only=True, eq=False)
class SynthSample:
    """One synthesis draw. ``alpha`` is the texture weight (0.0 for a clean sample), ``texture`` the augmented
    texture A in the image's layout (None for a clean sample), ``angle`` the rotation applied to the clean
    image in degrees (None if not rotated), ``augmentations`` the texture augmentations applied, in order."""

    clean: np.ndarray
    anomalous: np.ndarray
    mask: np.ndarray
    alpha: float
    texture: np.ndarray | None = None
    angle: float | None = None
    augmentations: tuple[str, ...] = ()
    texture_name: str | None = None

    @property
    def is_anomalous(self) -> bool:
        return bool(self.mask.any())

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.clean, self.anomalous, self.mask


def _check_image(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (1, 3):
        pass
    elif a.ndim != 2:
        raise ValueError(f"perlin synth: image must be H×W or H×W×3 (or H×W×1), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"perlin synth: empty image of shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"perlin synth: image must be float in [0, 1], got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _rotate(image: np.ndarray, angle: float, mode: str) -> np.ndarray:
    out = ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=1, mode=mode, cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class PerlinSynth:
    """Synthesise anomalies by blending an augmented texture into the image through a Perlin-noise mask.

    ``synth(image, rng) -> (clean, anomalous, mask)``; ``synth.sample(image, rng)`` returns the full
    :class:`SynthSample` (with α and the texture). Same generator state → identical outputs.
    """

    def __init__(self, cfg: PerlinConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else PerlinConfig()
        self.textures = TextureSource(self.cfg.texture_dir, cache_size=self.cfg.cache_size)

    def __repr__(self) -> str:
        return f"PerlinSynth({self.cfg!r}, textures={len(self.textures)})"

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.sample(image, rng).as_tuple()

    def _texture(self, h: int, w: int, channels: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple, str]:
        index = int(rng.integers(len(self.textures)))
        rgb = self.textures.get(index, h, w)
        rgb, names = augment_texture(rgb, rng, n=self.cfg.n_augment)
        tex = rgb.astype(np.float32) / 255.0
        if channels == 1:  # grey image: ITU-R 601 luma, like PIL's convert("L")
            tex = tex @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return tex, names, self.textures.describe(index)

    def sample(self, image: np.ndarray, rng: np.random.Generator) -> SynthSample:
        work, clean, angle = self.rotated(image, rng)
        if rng.random() < self.cfg.p_clean:
            return clean_sample(clean, angle)
        return self.blend(work, clean, angle, rng)

    def rotated(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float | None]:
        """``(work H×W×C, clean in the image's layout, angle or None)``: the checked image, rotated first with
        probability ``p_rotate`` (the first draw of every sample)."""
        cfg = self.cfg
        img = _check_image(image)
        work = img if img.ndim == 3 else img[..., None]
        angle = None
        if rng.random() < cfg.p_rotate:
            angle = float(rng.uniform(-cfg.image_rotation, cfg.image_rotation))
            work = _rotate(work, angle, cfg.rotate_fill)
        return work, work.reshape(img.shape), angle

    def blend(self, work: np.ndarray, clean: np.ndarray, angle: float | None, rng: np.random.Generator
              ) -> SynthSample:
        """The Perlin family: an augmented texture blended into ``work`` (H×W×C) through a Perlin mask."""
        cfg = self.cfg
        h, w, c = work.shape
        mask = None
        for _ in range(cfg.max_retries + 1):
            m = perlin_mask((h, w), rng, min_exp=cfg.perlin_scale_min_exp, max_exp=cfg.perlin_scale_max_exp,
                            threshold=cfg.threshold, max_angle=cfg.noise_rotation)
            if m.any():
                mask = m
                break
        if mask is None:  # every draw came out empty: a clean sample, consistently
            return clean_sample(clean, angle)

        tex, names, tex_name = self._texture(h, w, c, rng)
        tex = tex.reshape(h, w, c)
        lo, hi = cfg.opacity_range
        alpha = float(rng.uniform(lo, hi))
        m3 = mask[..., None]
        blended = (1.0 - alpha) * work + alpha * tex
        anomalous = np.where(m3 > 0, blended, work).astype(np.float32)
        return SynthSample(clean=clean, anomalous=anomalous.reshape(clean.shape), mask=mask, alpha=alpha,
                           texture=tex.reshape(clean.shape).astype(np.float32), angle=angle,
                           augmentations=names, texture_name=tex_name)


def clean_sample(clean: np.ndarray, angle: float | None) -> SynthSample:
    """A draw without anomaly (empty mask, α = 0)."""
    return SynthSample(clean=clean, anomalous=clean.copy(), mask=np.zeros(clean.shape[:2], np.float32), alpha=0.0,
                       angle=angle)


def build_perlin(cfg: PerlinConfig) -> PerlinSynth:
    """Perlin-mask texture blending (DRAEM/ALMRR anomaly synthesis)."""
    return PerlinSynth(cfg)
