"""Anomaly-source textures: a folder tree of images (e.g. DTD) or scikit-image's bundled pictures (offline)."""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ssmad.core import DataError

TEXTURE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Pictures that ship inside the scikit-image wheel (no download needed).
BUNDLED_TEXTURES = ("brick", "grass", "gravel", "camera", "coins", "moon", "coffee", "chelsea", "astronaut",
                    "rocket", "immunohistochemistry", "colorwheel")


def list_texture_files(texture_dir: str | os.PathLike) -> list[Path]:
    """Every image file under ``texture_dir`` (recursively), sorted; DataError if missing or empty."""
    root = Path(texture_dir)
    if not root.exists():
        raise DataError(f"texture folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"texture folder is not a directory: {root}")
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in TEXTURE_EXTENSIONS and p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"texture folder has no images ({', '.join(sorted(TEXTURE_EXTENSIONS))}): {root}")
    return files


def _to_rgb_u8(img: Image.Image) -> np.ndarray:
    """Any PIL mode as RGB uint8 (16-bit and float images scaled by their range, not clipped)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float64) / 65535.0
        a = np.clip(a, 0.0, 1.0)
        g = np.rint(a * 255.0).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        top = 1.0 if a.max(initial=0.0) <= 1.0 else (255.0 if a.max() <= 255.0 else 65535.0)
        g = np.rint(np.clip(a / top, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def read_texture(path: str | os.PathLike) -> np.ndarray:
    """Read one texture file as RGB uint8 H×W×3; DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb_u8(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read texture image {path}: {reason}") from None


@functools.cache
def bundled_texture(name: str) -> np.ndarray:
    """One of scikit-image's bundled pictures as RGB uint8 (grey ones replicated); read once per process."""
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3].astype(np.uint8)
    a.setflags(write=False)
    return a


def resize_rgb(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Squash-resize an RGB uint8 array to (height, width) with PIL's bilinear (antialiased) filter."""
    if img.shape[0] == height and img.shape[1] == width:
        return np.array(img, dtype=np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), Image.BILINEAR))


class TextureSource:
    """Texture images to draw from, listed once and decoded lazily with a small LRU cache of resized copies.

    ``texture_dir=None`` uses :data:`BUNDLED_TEXTURES`. Picklable (for data-loader workers)."""

    def __init__(self, texture_dir: str | None = None, cache_size: int = 64) -> None:
        self.texture_dir = texture_dir
        self.cache_size = int(cache_size)
        self.files: list[Path] | None = list_texture_files(texture_dir) if texture_dir is not None else None
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(BUNDLED_TEXTURES)

    def describe(self, index: int) -> str:
        return str(self.files[index]) if self.files is not None else f"skimage.data.{BUNDLED_TEXTURES[index]}"

    def get(self, index: int, height: int, width: int) -> np.ndarray:
        """Texture ``index`` resized to (height, width), RGB uint8 (a private copy)."""
        key = (int(index), int(height), int(width))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit.copy()
        raw = read_texture(self.files[index]) if self.files is not None else bundled_texture(BUNDLED_TEXTURES[index])
        out = resize_rgb(raw, height, width)
        if self.cache_size > 0:
            self._cache[key] = out
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out.copy()

    def draw(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        return self.get(int(rng.integers(len(self))), height, width)
