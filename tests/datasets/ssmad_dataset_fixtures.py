"""Tiny on-disk fixtures of every dataset layout (16-32 px images), shared by the dataset tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 20, 28  # non-square on purpose: catches (h, w) swaps


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def box_mask(h: int = H, w: int = W, box=(4, 6, 12, 16), value: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = value
    return m


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def save_variant(path: Path, seed: int, kind: str) -> Path:
    """An image in one of several modes: rgb, gray (L), rgba, palette (P), gray16 (I;16)."""
    a = rgb(seed)
    if kind == "rgb":
        return save(path, a)
    if kind == "gray":
        return save(path, a[..., 0])
    if kind == "rgba":
        return save(path, np.dstack([a, np.full((H, W), 128, np.uint8)]))
    if kind == "palette":
        return save(path, a, mode="P")
    if kind == "gray16":
        return save(path, a[..., 0].astype(np.uint16) * 257)
    raise ValueError(kind)


def make_mvtec(root: Path, categories=("bottle", "carpet")) -> Path:
    kinds = ["gray", "rgba", "palette"]
    for ci, cat in enumerate(categories):
        d = root / cat
        for i in range(3):
            save_variant(d / "train" / "good" / f"{i:03d}.png", 100 * ci + i, kinds[i])
        for i in range(2):
            save_variant(d / "test" / "good" / f"{i:03d}.png", 100 * ci + 10 + i, "gray16" if i else "rgb")
        for i in range(2):
            save(d / "test" / "crack" / f"{i:03d}.png", rgb(100 * ci + 20 + i))
            save(d / "ground_truth" / "crack" / f"{i:03d}_mask.png", box_mask())
    return root


def make_btad(root: Path) -> Path:
    for cat, img_ext, mask_ext in (("01", ".bmp", ".png"), ("03", ".bmp", ".bmp")):
        d = root / cat
        for i in range(3):
            save(d / "train" / "ok" / f"{i:04d}{img_ext}", rgb(i))
        save(d / "test" / "ok" / f"0000{img_ext}", rgb(50))
        for i in range(2):
            save(d / "test" / "ko" / f"{i:04d}{img_ext}", rgb(60 + i))
            save(d / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", box_mask())
    return root


def make_visa(root: Path, objects=("candle", "pcb1")) -> Path:
    rows = []
    for obj in objects:
        base = root / obj / "Data"
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save(root / rel, rgb(i))
            rows.append([obj, "train" if i < 2 else "test", "normal", rel, ""])
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save(root / rel, rgb(30 + i))
            save(root / mrel, box_mask(value=1 + i))  # VisA masks hold small label values, not 255
            rows.append([obj, "test", "anomaly", rel, mrel])
        base.mkdir(parents=True, exist_ok=True)
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def make_mtd(root: Path, n_free: int = 10, defects=(("MT_Crack", 3), ("MT_Blowhole", 2))) -> Path:
    for i in range(n_free):
        stem = f"exp{i}_num_{1000 + i}"
        save(root / "MT_Free" / "Imgs" / f"{stem}.jpg", rgb(i)[..., 0])
        save(root / "MT_Free" / "Imgs" / f"{stem}.png", np.zeros((H, W), np.uint8))
    for cls, n in defects:
        for i in range(n):
            stem = f"exp{i}_num_{2000 + i}"
            save(root / cls / "Imgs" / f"{stem}.jpg", rgb(40 + i)[..., 0])
            m = box_mask()
            m[3, 3] = 127  # anti-aliased values around the defect: > 127 is defect
            m[3, 4] = 128
            save(root / cls / "Imgs" / f"{stem}.png", m)
    return root


def make_nanotwice(root: Path, gt_names: str = "suffix") -> Path:
    for i in range(5):
        a = rgb(i)[..., 0]
        save(root / "Normal" / f"normal_{i:02d}.tif", a.astype(np.uint16) * 257 if i % 2 else a)
    for i in range(2):
        save(root / "Anomalous" / "images" / f"ITIA{i:04d}.tif", rgb(10 + i)[..., 0])
        name = f"ITIA{i:04d}_gt.png" if gt_names == "suffix" else f"mask{i:02d}.png"
        save(root / "Anomalous" / "gt" / name, box_mask())
    return root
