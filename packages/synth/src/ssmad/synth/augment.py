"""Photometric and geometric augmentations of the anomaly-source texture (numpy, PIL, scipy).

Each augmentation takes an RGB uint8 array H×W×3 and a ``numpy.random.Generator`` and returns a new RGB
uint8 array of the same shape. The list mirrors the one used by DRAEM/ALMRR for their texture source
(gamma contrast, brightness, sharpness, hue/saturation, solarize, posterize, invert, autocontrast,
equalize, affine rotation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def gamma_contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gamma in [0.5, 2]."""
    gamma = rng.uniform(0.5, 2.0, size=3)
    return _u8(255.0 * (img.astype(np.float64) / 255.0) ** gamma)


def brightness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by U(0.8, 1.2), then add U(-30, 30) grey levels."""
    mul = rng.uniform(0.8, 1.2)
    add = rng.uniform(-30.0, 30.0)
    return _u8(img.astype(np.float64) * mul + add)


def sharpness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PIL sharpness enhancement with factor U(0, 2) (0 blurs, 2 sharpens)."""
    factor = rng.uniform(0.0, 2.0)
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(factor))


def hue_saturation(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift hue and saturation independently by U(-50, 50) on PIL's 0..255 HSV scale (hue wraps)."""
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(np.int64)
    dh, ds = rng.integers(-50, 51, size=2)
    hsv[..., 0] = (hsv[..., 0] + dh) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"))


def solarize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert every value at or above a threshold drawn in [32, 128]."""
    threshold = int(rng.integers(32, 129))
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def posterize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 2..6 most significant bits."""
    bits = int(rng.integers(2, 7))
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def invert(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (255 - img).astype(np.uint8)


def autocontrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretch each channel to the full range (PIL ImageOps.autocontrast)."""
    return np.asarray(ImageOps.autocontrast(Image.fromarray(img)))


def equalize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Histogram equalisation per channel (PIL ImageOps.equalize)."""
    return np.asarray(ImageOps.equalize(Image.fromarray(img)))


def rotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Affine rotation by U(-45°, 45°) about the centre (bilinear, mirrored border)."""
    angle = rng.uniform(-45.0, 45.0)
    out = ndimage.rotate(img.astype(np.float32), angle, axes=(1, 0), reshape=False, order=1, mode="reflect")
    return _u8(out)


AUGMENTATIONS: dict[str, Augment] = {
    "gamma_contrast": gamma_contrast,
    "brightness": brightness,
    "sharpness": sharpness,
    "hue_saturation": hue_saturation,
    "solarize": solarize,
    "posterize": posterize,
    "invert": invert,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
}


def augment_texture(img: np.ndarray, rng: np.random.Generator, n: int = 3,
                    names: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Apply ``n`` distinct augmentations chosen at random (in random order) from ``names`` (default: all).

    Returns the augmented RGB uint8 array and the names applied, in order."""
    pool = list(names) if names is not None else list(AUGMENTATIONS)
    n = min(int(n), len(pool))
    chosen = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)] if n > 0 else []
    out = np.ascontiguousarray(img, dtype=np.uint8)
    for name in chosen:
        out = np.ascontiguousarray(AUGMENTATIONS[name](out, rng), dtype=np.uint8)
    return out, tuple(chosen)
