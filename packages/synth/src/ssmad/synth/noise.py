"""Gradient (Perlin) noise on a regular lattice, and the thresholded, rotated anomaly masks drawn from it."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of ``shape`` (H, W) with ``res`` (ry, rx) lattice cells along each axis.

    The lattice must divide the canvas, so the noise is generated on the next multiple of ``res`` and cropped
    to ``shape``. One random unit gradient per lattice node; values lie roughly in [-1, 1] (scaled by √2 so
    the theoretical extreme of 2-D Perlin noise, √2/2, maps to 1). Returns float32 H×W.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h <= 0 or w <= 0 or ry <= 0 or rx <= 0:
        raise ValueError(f"perlin_noise: shape and res must be positive, got {shape} and {res}")
    hp = math.ceil(h / ry) * ry
    wp = math.ceil(w / rx) * rx
    cell_h, cell_w = hp // ry, wp // rx
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    y = np.arange(h, dtype=np.float64) / cell_h  # only the rows/columns we keep after the crop
    x = np.arange(w, dtype=np.float64) / cell_w
    yi = np.floor(y).astype(np.int64)
    xi = np.floor(x).astype(np.int64)
    fy = (y - yi)[:, None]
    fx = (x - xi)[None, :]
    yi, xi = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[yi + dy, xi + dx] * (fy - dy) + gx[yi + dy, xi + dx] * (fx - dx)

    uy, ux = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1.0 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1.0 - ux) + corner(1, 1) * ux
    noise = top * (1.0 - uy) + bottom * uy
    return (math.sqrt(2.0) * noise).astype(np.float32)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, *, min_exp: int = 0, max_exp: int = 5,
                threshold: float = 0.5, max_angle: float = 90.0) -> np.ndarray:
    """A binary anomaly mask: Perlin noise with scale 2^k per axis (k drawn independently in
    [min_exp, max_exp]), rotated by U(-max_angle, max_angle) degrees (bilinear, zero fill), thresholded at
    ``threshold``. Returns float32 H×W in {0, 1} (possibly empty)."""
    ky = int(rng.integers(min_exp, max_exp + 1))
    kx = int(rng.integers(min_exp, max_exp + 1))
    noise = perlin_noise(shape, (2 ** ky, 2 ** kx), rng)
    angle = float(rng.uniform(-max_angle, max_angle))
    if angle != 0.0:
        noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return (noise > threshold).astype(np.float32)
