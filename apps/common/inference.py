"""Batched inference over a dataset's samples, and the decision thresholds fitted on normal images."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .data import Images, loader
from .method import Method


def decision_thresholds(scores: np.ndarray, maps: np.ndarray, q: float) -> dict[str, float]:
    """Image and pixel thresholds from normal validation images: the ``q`` quantile of their scores/pixels."""
    flat = maps.reshape(-1)
    if flat.size > 4_000_000:
        flat = np.random.default_rng(0).choice(flat, 4_000_000, replace=False)
    return {"image": float(np.quantile(scores, q)), "pixel": float(np.quantile(flat, q)),
            "pixel_low": float(np.quantile(flat, 0.5)), "quantile": q}


@torch.no_grad()
def infer(method: Method, samples, indices: list[int] | None = None, batch_size: int = 8,
          progress: str | None = None):
    """Scores (N,) and maps (N, H, W) float32 of ``samples[indices]``, the branch maps a method reports in
    ``AnomalyOutput.extras`` (name → (N, H, W)), and timing plus the ground-truth masks (N, H, W) bool
    (``info["masks"]``), read with the images so that evaluation does not load them again."""
    method.train(False)
    ds = Images(samples, indices)
    dl = loader(ds, batch_size, shuffle=False, workers=0)
    scores, maps, masks, extras = [], [], [], {}
    seconds = 0.0
    done = 0
    last = time.perf_counter()
    for batch in dl:
        images = batch["image"].to(method.device)
        t0 = time.perf_counter()
        out = method.predict(images)
        if method.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        scores.append(out.score.float().cpu().numpy())
        maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        for name, m in out.extras.items():
            extras.setdefault(name, []).append(m[:, 0].float().cpu().numpy())
        done += len(images)
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            print(f"{progress}: {done}/{len(ds)} images", file=sys.stderr, flush=True)
    n = max(1, len(ds))
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32),
            np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32),
            {k: np.concatenate(v) for k, v in extras.items()},
            {"seconds": seconds, "per_image_s": seconds / n, "batch_size": batch_size,
             "masks": np.concatenate(masks) if masks else np.zeros((0, 1, 1), bool)})
