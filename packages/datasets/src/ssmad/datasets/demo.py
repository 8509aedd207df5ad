"""``demo``: a small offline dataset built in memory from scikit-image's bundled textures.

Normal images are random crops (flips, right-angle turns where the texture allows, brightness/contrast jitter,
faint sensor noise) of one tinted texture per category (``brick``, ``grass``, ``gravel``). Anomalous test images
carry defects of kinds the ``perlin`` synthesiser does not make (``ssmad.synth.defects``), each with an exact pixel
mask (the mask is the set of pixels the defect changed):

- ``scratch``: a thin bright or dark line or curve (quadratic Bézier), 1-3 px wide at 128 px;
- ``dent``: a small disc whose texture is smoothed and shaded (raised rim, darker centre);
- ``hole``: a missing piece, an irregular blob of flat colour (mostly dark, sometimes a pale substrate);
- ``stain``: an irregular blob tinted with a colour foreign to the texture.

Everything derives from ``seed``; a build takes well under a second at the default size and is cached per
process (same parameters → the same samples).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from ssmad.core import ConfigError, DataError, Sample, configclass, field, non_negative, positive, suggest
from ssmad.synth.defects import DEFECTS

from .base import AnomalyDataset, MemoryList

# per-channel gamma that tints the grey texture (r, g, b): < 1 brightens a channel
DEMO_TEXTURES: dict[str, tuple[float, float, float]] = {
    "brick": (0.75, 1.15, 1.35),
    "grass": (1.35, 0.85, 1.45),
    "gravel": (1.0, 1.03, 1.12),
}
ROTATABLE = {"grass", "gravel"}  # brick courses must stay horizontal
DEFECT_KINDS = ("scratch", "dent", "hole", "stain")


@configclass
class DemoConfig:
    """The built-in demo data (no files needed)."""

    category: str = "brick"
    image_size: int = field(default=128, validator=positive)
    n_train: int = field(default=60, validator=positive)
    n_test_normal: int = field(default=20, validator=non_negative)
    n_test_anomalous: int = field(default=30, validator=non_negative)
    seed: int = 0
    root: str | None = None  # unused (the data lives in memory); accepted so `demo:` specs work


@functools.cache
def _base_texture(name: str) -> np.ndarray:
    """The tinted texture as RGB uint8 (read-only, once per process)."""
    import skimage.data

    grey = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    gamma = np.asarray(DEMO_TEXTURES[name], dtype=np.float32)
    rgb = np.rint(255.0 * np.clip(grey[..., None], 0.0, 1.0) ** gamma).astype(np.uint8)
    rgb.setflags(write=False)
    return rgb


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB → float32 size×size×3 in [0, 1] (PIL bilinear, antialiased when shrinking)."""
    img = Image.fromarray(np.ascontiguousarray(a)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _normal_image(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = _base_texture(name)
    full = base.shape[0]
    crop = int(rng.integers(int(0.38 * full), int(0.55 * full) + 1))
    y, x = (int(v) for v in rng.integers(0, full - crop + 1, size=2))
    patch = base[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    if name in ROTATABLE:
        patch = np.rot90(patch, int(rng.integers(4)))
    img = _resize(patch, size)
    mean = img.mean(axis=(0, 1), keepdims=True)
    contrast = np.float32(rng.uniform(0.9, 1.1))
    gain = np.float32(rng.uniform(0.93, 1.07))
    img = (mean + (img - mean) * contrast) * gain
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.008)
    return np.clip(img, 0.0, 1.0, out=img)




def _anomalous_image(name: str, size: int, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    img = _normal_image(name, size, rng)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(1 + int(rng.random() < 0.25)):  # one defect, sometimes two of the same kind
        for _attempt in range(10):
            out, m = DEFECTS[kind](img, rng)
            if m.sum() >= 4:
                img, mask = out, mask | m
                break
    return img, mask


def _sample(img: np.ndarray, mask: np.ndarray | None, label: int, path: str, defect: str, category: str) -> Sample:
    size = img.shape[0]
    mask_t = (torch.from_numpy(mask.astype(np.float32))[None] if mask is not None
              else torch.zeros((1, size, size), dtype=torch.float32))
    return Sample(image=torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), mask=mask_t, label=label,
                  path=path, original_size=(size, size), defect_type=defect, category=category)


@functools.lru_cache(maxsize=16)
def _generate(category: str, size: int, n_train: int, n_test_normal: int, n_test_anomalous: int, seed: int
              ) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    cat_id = sorted(DEMO_TEXTURES).index(category)
    rng = np.random.default_rng([seed, cat_id])
    train = tuple(_sample(_normal_image(category, size, rng), None, 0, f"demo:{category}/train/good/{i:03d}",
                          "good", category) for i in range(n_train))
    test = [_sample(_normal_image(category, size, rng), None, 0, f"demo:{category}/test/good/{i:03d}", "good",
                    category) for i in range(n_test_normal)]
    for i in range(n_test_anomalous):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        img, mask = _anomalous_image(category, size, rng, kind)
        test.append(_sample(img, mask, 1, f"demo:{category}/test/{kind}/{i:03d}", kind, category))
    return train, tuple(test)


def build_demo(cfg: DemoConfig) -> AnomalyDataset:
    """Offline demo textures (brick, grass, gravel) with scratches, dents, holes and stains."""
    if cfg.category not in DEMO_TEXTURES:
        raise DataError(f"demo: unknown category {cfg.category!r}; available: {suggest(cfg.category, DEMO_TEXTURES)}")
    if cfg.image_size < 16:
        raise ConfigError(f"demo: parameter 'image_size' must be at least 16, got {cfg.image_size}")
    train, test = _generate(cfg.category, cfg.image_size, cfg.n_train, cfg.n_test_normal, cfg.n_test_anomalous,
                            cfg.seed)
    return AnomalyDataset(name="demo", root=cfg.root, category=cfg.category, categories=sorted(DEMO_TEXTURES),
                          train=MemoryList(train), test=MemoryList(test), image_size=cfg.image_size)
