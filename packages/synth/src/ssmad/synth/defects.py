"""Structural defects drawn into an image, each with the exact mask of the pixels it changed.

Every generator is ``fn(image, rng) -> (out, mask)``: ``image`` float32 H×W×3 in [0, 1] (not modified), ``out`` the
same layout, ``mask`` bool H×W. Sizes scale with the shorter side (the widths below are at 128 px):

- ``scratch``: a thin bright or dark line or curve (quadratic Bézier), 1–3 px wide;
- ``dent``: a small disc whose texture is smoothed and shaded (darker centre, lit rim);
- ``hole``: a missing piece, an irregular blob of flat colour (mostly dark, sometimes a pale substrate);
- ``stain``: an irregular blob tinted with a colour foreign to most surfaces (blue, yellow, purple);
- ``cutpaste``: a rectangle of the image itself, brightness-jittered and pasted elsewhere (CutPaste, Li et al.
  2021; ``scar``: the same with a long thin strip, rotated).

They make the defects of the ``demo`` dataset's test images and the non-Perlin families of the ``mixed``
synthesiser; a generator may return an empty mask (e.g. a strip that falls outside the image): callers redraw.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

Defect = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _centre(h: int, w: int, rng: np.random.Generator, margin: float) -> np.ndarray:
    """A point (y, x) at least ``margin`` inside an H×W image."""
    return rng.uniform([margin, margin], [h - margin, w - margin])


def blob(shape: tuple[int, int], rng: np.random.Generator, radius: float) -> np.ndarray:
    """An irregular filled blob (star-shaped, smoothly varying radius) inside an H×W image: bool H×W."""
    h, w = shape
    yy, xx = _grid(h, w)
    cy, cx = _centre(h, w, rng, radius * 1.3)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    k = np.arange(1, 5)
    amps = rng.uniform(0.0, 0.22, size=4) / k
    phases = rng.uniform(0, 2 * math.pi, size=4)
    boundary = radius * (1.0 + (amps[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None])).sum(0))
    return r <= boundary


def scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    side = min(h, w)
    length = rng.uniform(0.3, 0.7) * side
    angle = rng.uniform(0, math.pi)
    c = rng.uniform([0.25 * h, 0.25 * w], [0.75 * h, 0.75 * w])
    d = np.array([math.sin(angle), math.cos(angle)]) * length / 2
    p0, p2 = c - d, c + d
    bend = rng.uniform(-0.35, 0.35) * length
    p1 = c + np.array([d[1], -d[0]]) / (np.linalg.norm(d) + 1e-9) * bend
    t = np.linspace(0.0, 1.0, max(8, int(length * 3)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # quadratic Bézier
    width = rng.uniform(0.5, 1.4) * side / 128.0
    line = np.zeros((h, w), dtype=bool)
    iy, ix = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    line[iy[keep], ix[keep]] = True
    mask = ndimage.distance_transform_edt(~line) <= width
    s = rng.uniform(0.45, 0.7)
    out = img.copy()
    if rng.random() < 0.5:
        out[mask] = img[mask] + (1.0 - img[mask]) * s  # bright scratch
    else:
        out[mask] = img[mask] * (1.0 - s)  # dark scratch
    return out, mask


def dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    radius = rng.uniform(0.05, 0.1) * min(h, w)
    yy, xx = _grid(h, w)
    cy, cx = _centre(h, w, rng, radius + 1)
    d = np.hypot(yy - cy, xx - cx) / radius
    mask = d < 1.0
    smooth = ndimage.gaussian_filter(img, sigma=(radius / 3, radius / 3, 0))
    weight = np.where(mask, 0.4 + 0.6 * np.cos(np.clip(d, 0, 1) * math.pi / 2) ** 2, 0.0)[..., None]
    shade = np.where(mask, -0.22 + 0.3 * np.clip((d - 0.6) / 0.4, 0, 1), 0.0)[..., None]  # dark centre, lit rim
    shade *= rng.uniform(0.8, 1.2)
    out = img * (1 - weight) + smooth * weight + shade * weight
    out = np.where(mask[..., None], np.clip(out, 0.0, 1.0), img)
    return out.astype(np.float32), mask


def hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = blob(img.shape[:2], rng, rng.uniform(0.05, 0.11) * min(img.shape[:2]))
    level = rng.uniform(0.08, 0.25) if rng.random() < 0.7 else rng.uniform(0.62, 0.8)  # dark gap or substrate
    colour = np.array([level, level * rng.uniform(0.85, 1.05), level * rng.uniform(0.8, 1.0)], dtype=np.float32)
    out = img.copy()
    out[mask] = colour + rng.normal(0.0, 0.01, size=(int(mask.sum()), 3)).astype(np.float32)
    return np.clip(out, 0.0, 1.0), mask


def stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = blob(img.shape[:2], rng, rng.uniform(0.07, 0.14) * min(img.shape[:2]))
    hues = {0: (0.25, 0.35, 0.95), 1: (0.9, 0.85, 0.2), 2: (0.7, 0.25, 0.85)}  # blue, yellow, purple
    tint = np.asarray(hues[int(rng.integers(3))], dtype=np.float32)
    strength = rng.uniform(0.4, 0.6)
    luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    stained = (0.35 + 0.75 * luma[..., None]) * tint
    out = img.copy()
    out[mask] = (1 - strength) * img[mask] + strength * stained[mask]
    return np.clip(out, 0.0, 1.0), mask


def _paste(img: np.ndarray, rng: np.random.Generator, ph: int, pw: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A ph×pw rectangle of ``img`` (brightness × U(0.9, 1.1)), rotated by ``angle``°, pasted at a random place."""
    h, w = img.shape[:2]
    ph, pw = max(1, min(ph, h)), max(1, min(pw, w))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = np.clip(img[y0:y0 + ph, x0:x0 + pw] * np.float32(rng.uniform(0.9, 1.1)), 0.0, 1.0)
    shape = np.ones((ph, pw), np.float32)
    if angle:
        patch = ndimage.rotate(patch, angle, axes=(1, 0), reshape=True, order=1, mode="constant", cval=0.0)
        shape = ndimage.rotate(shape, angle, axes=(1, 0), reshape=True, order=1, mode="constant", cval=0.0)
    qh, qw = min(shape.shape[0], h), min(shape.shape[1], w)
    patch, shape = patch[:qh, :qw], shape[:qh, :qw] > 0.5
    y1, x1 = int(rng.integers(0, h - qh + 1)), int(rng.integers(0, w - qw + 1))
    out = img.copy()
    region = out[y1:y1 + qh, x1:x1 + qw]
    region[shape] = patch[shape]
    mask = np.zeros((h, w), dtype=bool)
    # the mask is what changed: a pasted pixel equal to the one it covers is not a defect
    mask[y1:y1 + qh, x1:x1 + qw] = shape & (np.abs(region - img[y1:y1 + qh, x1:x1 + qw]).max(-1) > 0)
    return out.astype(np.float32), mask


def cutpaste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if rng.random() < 0.5:   # a patch of 2–15% of the area, aspect ratio 0.3–3.3
        area = rng.uniform(0.02, 0.15) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        return _paste(img, rng, round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect)), 0.0)
    side = min(h, w)   # a scar: a thin strip, 2–6% of the side wide and 10–40% long, rotated ±45°
    return _paste(img, rng, round(rng.uniform(0.1, 0.4) * side), max(2, round(rng.uniform(0.02, 0.06) * side)),
                  float(rng.uniform(-45, 45)))


DEFECTS: dict[str, Defect] = {"scratch": scratch, "dent": dent, "hole": hole, "stain": stain, "cutpaste": cutpaste}
