"""``demo``: a small offline dataset built in memory from scikit-image's bundled textures.

Normal images are random crops (flips, right-angle turns where the texture allows, brightness/contrast jitter,
faint sensor noise) of one tinted texture per category (``brick``, ``grass``, ``gravel``). Anomalous test images
carry defects of kinds the ``perlin`` synthesiser does not make, each with an exact pixel mask (the mask is
the set of pixels the defect changed):

- ``scratch``: a thin bright or dark line or curve (quadratic Bézier), 1-3 px wide at 128 px;
- ``dent``: a small disc whose texture is smoothed and shaded (raised rim, darker centre);
- ``hole``: a missing piece, an irregular blob of flat colour (mostly dark, sometimes a pale substrate);
- ``stain``: an irregular blob tinted with a colour foreign to the texture.

Everything derives from ``seed``; a build takes well under a second at the default size and is cached per
process (same parameters → the same samples).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ssmad.core import ConfigError, DataError, Sample, configclass, field, non_negative, positive, suggest

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


# ---- defects: each returns (image, mask) with mask == the pixels it changed ------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _blob(size: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    """An irregular filled blob (star-shaped polygon with smoothly varying radius) centred inside the image."""
    yy, xx = _grid(size)
    margin = radius * 1.3
    cy, cx = rng.uniform(margin, size - margin, size=2)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    k = np.arange(1, 5)
    amps = rng.uniform(0.0, 0.22, size=4) / k
    phases = rng.uniform(0, 2 * math.pi, size=4)
    boundary = radius * (1.0 + (amps[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None])).sum(0))
    return r <= boundary


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0, math.pi)
    c = rng.uniform(0.25 * size, 0.75 * size, size=2)
    d = np.array([math.sin(angle), math.cos(angle)]) * length / 2
    p0, p2 = c - d, c + d
    bend = rng.uniform(-0.35, 0.35) * length
    p1 = c + np.array([d[1], -d[0]]) / (np.linalg.norm(d) + 1e-9) * bend
    t = np.linspace(0.0, 1.0, max(8, int(length * 3)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # quadratic Bézier
    width = rng.uniform(0.5, 1.4) * size / 128.0
    line = np.zeros((size, size), dtype=bool)
    iy, ix = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    line[iy[keep], ix[keep]] = True
    dist = ndimage.distance_transform_edt(~line)
    mask = dist <= width
    s = rng.uniform(0.45, 0.7)
    out = img.copy()
    if rng.random() < 0.5:
        out[mask] = img[mask] + (1.0 - img[mask]) * s  # bright scratch
    else:
        out[mask] = img[mask] * (1.0 - s)  # dark scratch
    return out, mask


def _dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    radius = rng.uniform(0.05, 0.1) * size
    yy, xx = _grid(size)
    cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
    d = np.hypot(yy - cy, xx - cx) / radius
    mask = d < 1.0
    smooth = ndimage.gaussian_filter(img, sigma=(radius / 3, radius / 3, 0))
    weight = np.where(mask, 0.4 + 0.6 * np.cos(np.clip(d, 0, 1) * math.pi / 2) ** 2, 0.0)[..., None]
    shade = np.where(mask, -0.22 + 0.3 * np.clip((d - 0.6) / 0.4, 0, 1), 0.0)[..., None]  # dark centre, lit rim
    shade *= rng.uniform(0.8, 1.2)
    out = img * (1 - weight) + smooth * weight + shade * weight
    out = np.where(mask[..., None], np.clip(out, 0.0, 1.0), img)
    return out.astype(np.float32), mask


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    mask = _blob(size, rng, rng.uniform(0.05, 0.11) * size)
    level = rng.uniform(0.08, 0.25) if rng.random() < 0.7 else rng.uniform(0.62, 0.8)  # dark gap or substrate
    colour = np.array([level, level * rng.uniform(0.85, 1.05), level * rng.uniform(0.8, 1.0)], dtype=np.float32)
    out = img.copy()
    out[mask] = colour + rng.normal(0.0, 0.01, size=(int(mask.sum()), 3)).astype(np.float32)
    return np.clip(out, 0.0, 1.0), mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    mask = _blob(size, rng, rng.uniform(0.07, 0.14) * size)
    hues = {0: (0.25, 0.35, 0.95), 1: (0.9, 0.85, 0.2), 2: (0.7, 0.25, 0.85)}  # blue, yellow, purple
    tint = np.asarray(hues[int(rng.integers(3))], dtype=np.float32)
    strength = rng.uniform(0.4, 0.6)
    luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    stained = (0.35 + 0.75 * luma[..., None]) * tint
    out = img.copy()
    out[mask] = (1 - strength) * img[mask] + strength * stained[mask]
    return np.clip(out, 0.0, 1.0), mask


DEFECTS = {"scratch": _scratch, "dent": _dent, "hole": _hole, "stain": _stain}


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
